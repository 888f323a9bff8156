"""A worker that deletes what it handled from the sessions and events topics
(``CLICKSTREAM_WORKER_SOURCE_PURGE_SECONDS``, on in ``clickstream run``): the topics keep
only what is not yet handled, and no crash ever needs what was deleted."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from clickstream.settings import Settings
from deploy.local.run import LOCAL_SOURCE_PURGE_SECONDS, source_purge_seconds
from schemas import Topics
from tests.utils.bulk import publish_sessions
from tests.utils.kafka import TopicReader
from tests.utils.payloads import new_id
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemas import AvroCodec
    from tests.utils.pipeline import Worker

SESSIONS = 400


def test_handled_records_are_deleted_and_no_restart_needs_them(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    codec: AvroCodec,
) -> None:
    settings = settings_factory(tick_interval_seconds=0.5, worker_source_purge_seconds=0.5)
    topics = Topics(settings.topic_prefix)
    reader = TopicReader(settings.kafka_common_config(), codec)
    worker = worker_factory(settings).start()
    ids = publish_sessions(settings, sessions=SESSIONS, events_each=2)
    with gateway_client(settings, [worker]) as gateway:
        Pipeline(settings, gateway, [worker]).wait_session(ids[-1], events=2, timeout=60)
    # Everything handled is deleted: all that the topics held once the sessions were
    # served goes (the sessions topic keeps getting the worker's own ticks, so it is never
    # empty for long).
    for topic in (topics.sessions, topics.events):
        served = reader.end_offsets(topic)
        assert sum(served.values()) >= SESSIONS
        eventually(
            lambda topic=topic, served=served: all(
                first >= served[p] for p, (first, _) in reader.watermarks(topic).items()
            ),
            timeout=30,
        )

    # A SIGKILL, then the same worker on an empty disk: its state comes from the changelog
    # alone, and nothing deleted is missed.
    worker.kill()
    restarted = worker_factory(settings, restarting=worker, new_disk=True).start()
    with gateway_client(settings, [restarted]) as gateway:
        pipeline = Pipeline(settings, gateway, [restarted])
        answer = pipeline.release(new_id()).json()
        assert (answer["session_count"], answer["event_count"]) == (SESSIONS, 2 * SESSIONS)
        released = pipeline.batch_sessions(answer["batch_id"], page_size=1000)
    counted = Counter(s["session_id"] for s in released)
    assert set(counted) == set(ids)
    assert max(counted.values()) == 1


def test_clickstream_run_purges_only_the_broker_it_starts() -> None:
    assert source_purge_seconds(Settings()) == LOCAL_SOURCE_PURGE_SECONDS
    assert source_purge_seconds(Settings(kafka_bootstrap="kafka:9092")) == 0
    assert source_purge_seconds(Settings(worker_source_purge_seconds=0)) == 0

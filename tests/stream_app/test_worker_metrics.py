"""The worker's Prometheus metrics on ``/metrics`` of its web server, after a known load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from deploy.local.servers import LocalMongo
    from schemas import AvroCodec
    from tests.utils.pipeline import Worker

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/clickstream.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Samples:
    """Every sample of the worker's ``/metrics``, as a Prometheus server would read it (no
    credential)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name}


def test_metrics_count_exactly_what_a_known_load_gives(pipeline: Pipeline) -> None:
    topics = Topics(pipeline.settings.topic_prefix)
    partitions = pipeline.settings.topic_partitions
    sessions = [session_body() for _ in range(4)]
    for session in sessions:
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body(), event_body()])
        pipeline.add_events(session["session_id"], [event_body()])
    producer = Producer(pipeline.settings.kafka_producer_config())
    producer.produce(topics.sessions, b"not an avro message", b"junk")
    assert producer.flush(10) == 0

    released = pipeline.release(new_id()).json()
    assert (released["session_count"], released["event_count"]) == (4, 12)

    worker = pipeline.workers[0]

    def settled() -> Samples:
        """Once every source partition is handled up to its end and the release counted."""
        samples = _scrape(worker.url)
        lag = {
            (dict(labels)["topic"], dict(labels)["partition"]): value
            for (name, labels), value in samples.items()
            if name == "clickstream_worker_consumer_lag"
        }
        assert {topic for topic, _ in lag} == {topics.sessions, topics.events}
        assert len(lag) == 2 * partitions, "one worker owns every partition"
        assert set(lag.values()) == {0}, lag
        assert samples[("clickstream_releases_total", frozenset({("outcome", "released")}))] == 1
        return samples

    samples = eventually(settled, timeout=60)

    messages = {
        (dict(labels)["topic"], dict(labels)["kind"]): value
        for (name, labels), value in samples.items()
        if name == "clickstream_worker_messages_total"
    }
    ticks = messages.pop((topics.sessions, "PartitionTick"), 0)
    assert ticks >= 1, "the coordinator ticks every partition every half second"
    assert messages == {
        (topics.sessions, "SessionRegistered"): 4,
        (topics.events, "SessionEvents"): 8,
        (topics.sessions, "undecodable"): 1,
        (topics.sessions, "ReleaseMarker"): partitions,
        (topics.events, "ReleaseMarker"): partitions,
    }
    dead = _by(samples, "clickstream_dead_letters_total", "reason")
    assert dead.pop("undecodable_message") == 1
    assert set(dead.values()) == {0}, dead
    assert _by(samples, "clickstream_releases_total", "outcome") == {"released": 1, "empty": 0}
    assert samples[("clickstream_batches_announced_total", frozenset())] == 1
    assert samples[("clickstream_release_duration_seconds_count", frozenset())] == 1
    assert samples[("clickstream_release_duration_seconds_sum", frozenset())] > 0
    assert samples[("clickstream_worker_handler_retries_total", frozenset())] == 0
    assert _by(samples, "clickstream_worker_table_entries", "table") == {"sessions": 4}
    shown = re.findall(r"clickstream_(?!gateway_)[a-z_]+", DASHBOARD.read_text())
    served = {name for name, _ in samples} | {name.removesuffix("_bucket") for name, _ in samples}
    assert set(shown) <= served, "the dashboard shows only what the worker serves"


def test_consumer_lag_shows_a_backlog_and_returns_to_zero(pipeline: Pipeline) -> None:
    """A burst of messages on one partition, each dead-lettered, is a backlog the worker
    works through: the lag of that partition is seen above 0, then back at 0 once every
    message was handled. (The worker handles messages in batches: a burst of a few hundred
    is gone before a scrape could see it.)"""
    topics = Topics(pipeline.settings.topic_prefix)
    burst = 30_000
    producer = Producer(pipeline.settings.kafka_producer_config())
    for _ in range(burst):
        while True:
            try:
                producer.produce(topics.sessions, b"not an avro message", b"one partition")
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(30) == 0
    worker = pipeline.workers[0]
    seen: list[float] = []

    def worked_through() -> bool:
        samples = _scrape(worker.url)
        lag = [v for (n, _), v in samples.items() if n == "clickstream_worker_consumer_lag"]
        seen.append(max(lag, default=0))
        handled = samples.get(
            (
                "clickstream_worker_messages_total",
                frozenset({("topic", topics.sessions), ("kind", "undecodable")}),
            ),
            0,
        )
        return handled == burst and set(lag) == {0}

    eventually(worked_through, timeout=120)
    assert max(seen) > 0, "the backlog was never seen"
    dead = _by(_scrape(worker.url), "clickstream_dead_letters_total", "reason")
    assert dead["undecodable_message"] == burst


def test_handler_retries_are_counted_and_the_retried_message_once(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    own_mongod: LocalMongo,
    codec: AvroCodec,
) -> None:
    """Events whose session never came expire on a tick, which first looks for a released
    copy of the session in MongoDB (a retired session); with MongoDB away that read fails
    and the tick is retried until it is back, then the events are dead-lettered once."""
    settings = settings_factory(
        mongodb_uri=f"{own_mongod.address}&serverSelectionTimeoutMS=2000",
        tick_interval_seconds=0.5,
        orphan_event_wait_seconds=1,
    )
    worker = worker_factory(settings).start()
    topics = Topics(settings.topic_prefix)
    orphan_id = new_id()

    def retries() -> float:
        return _scrape(worker.url)[("clickstream_worker_handler_retries_total", frozenset())]

    def dead_letters() -> list[dict[str, object]]:
        reader = TopicReader(settings.kafka_common_config(), codec)
        return [m.record for m in reader.read(topics.dead_letter)]

    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        own_mongod.stop()
        try:
            pipeline.add_events(orphan_id, [event_body()])
            eventually(lambda: retries() >= 2, timeout=60)
            assert dead_letters() == [], "nothing decided while MongoDB is away"
        finally:
            own_mongod.start()
        eventually(lambda: len(dead_letters()) >= 1, timeout=120)

    samples = _scrape(worker.url)
    kinds = {
        (dict(labels)["topic"], dict(labels)["kind"]): value
        for (name, labels), value in samples.items()
        if name == "clickstream_worker_messages_total"
    }
    assert kinds[(topics.events, "SessionEvents")] == 1
    [letter] = dead_letters()
    assert (letter["reason"], letter["session_id"]) == ("orphan_event_expired", orphan_id)
    assert samples[("clickstream_worker_handler_retries_total", frozenset())] >= 2
    assert "worker stopping" not in worker.log(), "retried within its budget, not stopped"

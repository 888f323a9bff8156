"""The state's changelog is compacted: what a restarted worker reads grows with the live
sessions, not with every change ever made to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producers.library import ClickstreamProducer
from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, session_body
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from schemas import AvroCodec
    from tests.utils.pipeline import Worker

_REQUESTS = 600


def test_a_session_changed_many_times_leaves_few_messages_in_the_changelogs(
    stream_settings: Settings, worker_factory: Callable[..., Worker], codec: AvroCodec
) -> None:
    settings = stream_settings.model_copy(update={"changelog_segment_bytes": 1024 * 1024})
    worker = worker_factory(settings).start()
    session = session_body()
    with ClickstreamProducer(settings) as producer:
        producer.register_session(session)
        for _ in range(_REQUESTS):  # one request at a time: each rewrites the session
            # 4 KB each: every request rewrites the session's last piece, 4 to 8 KB.
            producer.add_events(session["session_id"], [event_body(meta={"n": "x" * 4000})])
    with gateway_client(settings, [worker]) as gateway:
        Pipeline(settings, gateway, [worker]).wait_session(
            session["session_id"], events=_REQUESTS, timeout=120
        )

    # Each request rewrote the session's entry and its last piece: 600 changes of one
    # entry, about 4 MB in 1 MiB segments. Compaction keeps about the latest of each closed
    # segment; the open one holds at most a quarter of them.
    changelog = Topics(settings.topic_prefix).state_changelog
    entry = b"e" + session["session_id"].encode()
    reader = TopicReader(settings.kafka_common_config(), codec)

    def entry_records() -> int:
        return sum(1 for message in reader.read_raw(changelog) if message.key() == entry)

    assert entry_records() > 0
    assert eventually(lambda: entry_records() < _REQUESTS / 4, timeout=120)

"""Control messages nobody can forge: markers, ticks and part reports produced straight to
the topics without the pipeline's signature (or too far ahead of the clock) are
dead-lettered and change nothing; the real release completes with exactly its sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from clickstream import clock
from schemas import Topics
from stream_app.control_auth import ControlAuth
from stream_app.coordinator import batch_id_for
from tests.fixtures import TEST_CONTROL_SECRET
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from schemas import AvroCodec
    from tests.utils.pipeline import Worker

TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000


def _release_request_batch_id(settings: Settings) -> str:
    """The batch id the coordinator will give the one release request on the topic."""
    consumer = Consumer({**settings.kafka_common_config(), "group.id": f"probe-{new_id()}"})
    try:
        consumer.assign([TopicPartition(Topics(settings.topic_prefix).releases, 0, 0)])
        consumer.seek(TopicPartition(Topics(settings.topic_prefix).releases, 0, OFFSET_BEGINNING))
        message = consumer.poll(20)
        assert message is not None
        assert not message.error()
        return str(batch_id_for(message))
    finally:
        consumer.close()


def _forge(settings: Settings, codec: AvroCodec, batch_id: str, release_id: str) -> None:
    """What an attacker with write access to the topics would send."""
    topics = Topics(settings.topic_prefix)
    now_ms = clock.now_ms()
    failed: list[object] = []
    producer = Producer(
        {
            **settings.kafka_producer_config(),
            # Not the gateway's 1 s publish timeout (this test's settings): a busy broker
            # must not time the attacker's messages out.
            "message.timeout.ms": 30_000,
            "on_delivery": lambda error, _: failed.append(error) if error else None,
        }
    )
    future = {
        "batch_id": "f" * 24,
        "release_id": new_id(),
        "requested_at_ms": now_ms + TEN_YEARS_MS,
        "min_idle_seconds": 0,
    }
    marker = codec.encode("clickstream.ReleaseMarker", future)
    # Signed with the real secret but absurdly far ahead: refused all the same.
    skewed = codec.encode("clickstream.ReleaseMarker", {**future, "batch_id": "e" * 24})
    signer = ControlAuth([TEST_CONTROL_SECRET.encode()], 3600_000)
    tick = codec.encode("clickstream.PartitionTick", {"sent_at_ms": now_ms + TEN_YEARS_MS})
    for partition in range(settings.topic_partitions):
        for topic in topics.ingest():
            producer.produce(topic, marker, partition=partition)
            producer.produce(
                topic, skewed, partition=partition, headers=signer.headers(topic, skewed)
            )
        producer.produce(
            topics.sessions,
            tick,
            partition=partition,
            headers={"clickstream-signature": b"0" * 64},
        )
        report = {
            "batch_id": batch_id,
            "release_id": release_id,
            "partition": partition,
            "session_count": 1000,
            "event_count": 1000,
            "repeat_session_count": 0,
            "deferred_session_count": 0,
        }
        value = codec.encode("clickstream.PartitionReleased", report)
        producer.produce(topics.releases, value, batch_id.encode())
    assert producer.flush(30) == 0
    assert not failed, f"forged messages not delivered: {failed}"


def _dead_letters(settings: Settings, codec: AvroCodec) -> list[dict[str, Any]]:
    reader = TopicReader(settings.kafka_common_config(), codec)
    return [m.record for m in reader.read(Topics(settings.topic_prefix).dead_letter)]


def _released(pipeline: Pipeline, release_id: str) -> dict[str, Any] | None:
    answer = pipeline.release(release_id)
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


def test_forged_markers_ticks_and_reports_change_nothing(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    codec: AvroCodec,
) -> None:
    # Sessions waiting for their registration would expire on a forged far-future tick.
    settings = settings_factory(tick_interval_seconds=0.5, publish_timeout_seconds=1)
    impatient = settings.model_copy(update={"release_wait_seconds": 1})
    sessions = [session_body() for _ in range(3)]
    orphan_id, orphan = new_id(), event_body()
    release_id = new_id()
    with gateway_client(impatient, []) as gateway:
        pipeline = Pipeline(impatient, gateway, [])
        for session in sessions:
            pipeline.register(session)
            pipeline.add_events(session["session_id"], [event_body(), event_body()])
        pipeline.add_events(orphan_id, [orphan])
        # Requested before any worker runs: the coordinator opens it once one starts.
        assert pipeline.release(release_id).status_code == 503
    batch_id = _release_request_batch_id(settings)
    _forge(settings, codec, batch_id, release_id)

    worker = worker_factory(settings).start()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        released = eventually(lambda: _released(pipeline, release_id), timeout=60)
        in_batch = pipeline.batch_sessions(batch_id)

        pipeline.register(session_body(session_id=orphan_id))
        shown = pipeline.wait_session(orphan_id, events=1)
        later = pipeline.release(new_id())

    assert released["batch_id"] == batch_id
    assert (released["status"], released["session_count"], released["event_count"]) == (
        "released",
        3,
        6,
    )
    assert sorted(s["session_id"] for s in in_batch) == sorted(s["session_id"] for s in sessions)
    assert [e["event_id"] for e in shown["events"]] == [orphan["event_id"]], "tick refused"
    assert later.status_code == 200, "the forged far-future marker made no later one stale"
    assert later.json()["session_count"] == 1
    letters = _dead_letters(settings, codec)
    topics = Topics(settings.topic_prefix)
    forged = [d for d in letters if d["reason"] == "forged_control_message"]
    skewed = [d for d in letters if d["reason"] == "control_message_clock_skew"]
    partitions = settings.topic_partitions
    assert sorted(d["source_topic"] for d in forged) == sorted(
        [topics.sessions] * 2 * partitions  # markers and ticks
        + [topics.events] * partitions
        + [topics.releases] * partitions  # reports, refused by the coordinator
    )
    assert len(skewed) == 2 * partitions
    assert "control message refused reason=forged_control_message" in worker.log()


def test_a_signature_binds_secret_topic_and_exact_value_and_survives_a_rotation() -> None:
    old, new = ControlAuth([b"old"], 1000), ControlAuth([b"new", b"old"], 1000)
    value = b"\x00\x00\x00\x00\x05marker"
    headers = old.headers("t.sessions", value)
    marker = {"requested_at_ms": 0}

    def refused(auth: ControlAuth, topic: str, body: bytes, sent: Any) -> str | None:
        refusal = auth.refusal("clickstream.ReleaseMarker", marker, topic, body, sent, now_ms=0)
        return refusal.reason if refusal else None

    assert refused(old, "t.sessions", value, headers) is None
    assert refused(new, "t.sessions", value, list(headers.items())) is None, "during rotation"
    assert refused(ControlAuth([b"new"], 1000), "t.sessions", value, headers) is not None
    assert refused(old, "t.events", value, headers) == "forged_control_message"
    assert refused(old, "t.sessions", value + b"x", headers) == "forged_control_message"
    assert refused(old, "t.sessions", value, None) == "forged_control_message"
    assert old.refusal("clickstream.SessionRegistered", {}, "t.sessions", value, None) is None

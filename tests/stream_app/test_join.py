"""The join of sessions and events in the stream's tables, seen through the API and the
dead-letter topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from confluent_kafka import Producer

from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import IRRELEVANT_URL, eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from schemas import AvroCodec
    from tests.utils.pipeline import Pipeline, Worker


def _dead_letters(pipeline: Pipeline, codec: AvroCodec) -> list[dict[str, object]]:
    reader = TopicReader(pipeline.settings.kafka_common_config(), codec)
    return [m.record for m in reader.read(Topics(pipeline.settings.topic_prefix).dead_letter)]


def test_events_before_their_session_wait_and_join_it(pipeline: Pipeline) -> None:
    session = session_body()
    early = [event_body(), event_body()]
    pipeline.add_events(session["session_id"], early)

    assert pipeline.session(session["session_id"]).status_code == 404

    pipeline.register(session)
    late = event_body()
    pipeline.add_events(session["session_id"], [late])

    shown = pipeline.wait_session(session["session_id"], events=3)
    assert [e["event_id"] for e in shown["events"]] == [
        early[0]["event_id"],
        early[1]["event_id"],
        late["event_id"],
    ]


def test_a_single_event_message_from_another_producer_joins_its_session(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    session = session_body()
    pipeline.register(session)
    record = {
        "session_id": session["session_id"],
        "event_id": new_id(),
        "object_id": "o",
        "event_type": "view",
        "created_at": 1,
        "meta": '{"from": "java"}',
        "received_at_ms": 1,
    }
    producer = Producer(pipeline.settings.kafka_producer_config())
    producer.produce(
        Topics(pipeline.settings.topic_prefix).events,
        codec.encode("clickstream.SessionEvent", record),
        session["session_id"].encode(),
    )
    assert producer.flush(10) == 0

    [shown] = pipeline.wait_session(session["session_id"], events=1)["events"]
    assert (shown["event_id"], shown["event_type"]) == (record["event_id"], "view")
    assert shown["meta"] == {"from": "java"}


def test_retried_requests_never_double_a_click(pipeline: Pipeline) -> None:
    session = session_body()
    pipeline.register(session)
    first, second, third = event_body(), event_body(), event_body()
    pipeline.add_events(session["session_id"], [first, second])
    pipeline.add_events(session["session_id"], [first, second])  # the client retried
    pipeline.add_events(session["session_id"], [second, third, third])
    changed = {**first, "object_id": "another"}
    pipeline.add_events(session["session_id"], [changed])  # same id: first write wins

    # Processed in order on the session's partition: once this one shows, all did.
    marker = event_body()
    pipeline.add_events(session["session_id"], [marker])
    shown = pipeline.wait_session(session["session_id"], events=4)

    assert [e["event_id"] for e in shown["events"]] == [
        first["event_id"],
        second["event_id"],
        third["event_id"],
        marker["event_id"],
    ]
    assert shown["events"][0]["object_id"] == first["object_id"]

    released = pipeline.release(new_id()).json()
    assert released["event_count"] == 4


def test_second_registration_keeps_the_first_and_dead_letters_a_conflict(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    session = session_body()
    pipeline.register(session)
    pipeline.register({**session, "created_at": session["created_at"] - 5})  # a retry
    conflicting = {**session, "search_query": "another query"}
    pipeline.register(conflicting)

    def conflict_dead_lettered() -> list[dict[str, object]]:
        return [
            d for d in _dead_letters(pipeline, codec) if d["reason"] == "conflicting_registration"
        ]

    [letter] = eventually(conflict_dead_lettered)
    assert letter["session_id"] == session["session_id"]
    assert "search_query" in str(letter["detail"])
    assert letter["source_topic"] == Topics(pipeline.settings.topic_prefix).sessions
    assert codec.decode(letter["value"]).record["search_query"] == "another query"  # type: ignore[arg-type]
    assert pipeline.wait_session(session["session_id"])["search_query"] == "user search query"


def test_marking_a_session_irrelevant_goes_through_the_stream(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    session = session_body()
    pipeline.register(session)

    # At once: the mark follows the acknowledged registration on its partition.
    marked = pipeline.gateway.post(IRRELEVANT_URL, json={"session_id": session["session_id"]})
    unknown_id = new_id()
    unknown = pipeline.gateway.post(IRRELEVANT_URL, json={"session_id": unknown_id})

    assert marked.status_code == 200
    assert marked.json() == {"session_id": session["session_id"], "is_irrelevant": True}
    assert unknown.status_code == 200, "the stream decides, as for the registration"
    eventually(lambda: pipeline.session(session["session_id"]).json().get("is_irrelevant"))
    letters = eventually(
        lambda: [d for d in _dead_letters(pipeline, codec) if d["session_id"] == unknown_id]
    )
    assert [d["reason"] for d in letters] == ["session_not_registered"]
    assert pipeline.session(unknown_id).status_code == 404
    released = pipeline.release(new_id()).json()
    [in_batch] = pipeline.batch_sessions(released["batch_id"])
    assert in_batch["is_irrelevant"] is True


def test_unknown_session_is_404(pipeline: Pipeline) -> None:
    response = pipeline.session(new_id())

    assert response.status_code == 404
    assert "not registered" in response.json()["detail"]


def test_events_of_a_session_never_registered_expire_to_the_dead_letter_topic(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    codec: AvroCodec,
) -> None:
    from tests.utils.pipeline import Pipeline, gateway_client

    settings = settings_factory(orphan_event_wait_seconds=2, tick_interval_seconds=0.5)
    worker = worker_factory(settings).start()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        orphan_id = new_id()
        orphans = [event_body(meta={"n": 1}), event_body()]
        pipeline.add_events(orphan_id, orphans)

        def expired() -> list[dict[str, object]]:
            letters = _dead_letters(pipeline, codec)
            return [d for d in letters if d["reason"] == "orphan_event_expired"]

        letters = eventually(lambda: len(expired()) == 2 and expired(), timeout=30)
        events = [codec.decode(d["value"]).record for d in letters]  # type: ignore[arg-type]
        assert sorted(e["event_id"] for e in events) == sorted(o["event_id"] for o in orphans)
        assert {d["session_id"] for d in letters} == {orphan_id}
        assert all(d["source_topic"] == Topics(settings.topic_prefix).events for d in letters)

        # The session arriving now starts without the expired events.
        pipeline.register(session_body(session_id=orphan_id))
        late = event_body()
        pipeline.add_events(orphan_id, [late])
        shown = pipeline.wait_session(orphan_id, events=1)
        assert [e["event_id"] for e in shown["events"]] == [late["event_id"]]

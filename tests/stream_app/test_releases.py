"""Releasing batches: contents cut consistently, repeats, idleness, idempotency."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from confluent_kafka import Producer
from pymongo import MongoClient

from producers.ingest import IngestMessages
from producers.models import Limits, request_models
from schemas import AvroCodec, SchemaName, Topics
from tests.utils.bulk import publish_sessions
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import (
    BATCH_SESSIONS_URL,
    RELEASE_URL,
    Pipeline,
    eventually,
    gateway_client,
    leader_and_follower,
    wait_until_both_have_partitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker

BATCH_RELEASED = SchemaName.BATCH_RELEASED


def _announced(pipeline: Pipeline, codec: AvroCodec, count: int) -> list[str]:
    """The batch ids on the batch topic once at least ``count`` are there: a batch is
    announced in the transaction that follows marking it released in MongoDB."""
    reader = TopicReader(pipeline.settings.kafka_common_config(), codec)
    topic = Topics(pipeline.settings.topic_prefix).batches

    def read() -> list[str] | None:
        ids = [m.record["batch_id"] for m in reader.read(topic) if m.name == BATCH_RELEASED]
        return ids if len(ids) >= count else None

    return eventually(read, timeout=10)  # type: ignore[no-any-return]


def test_a_release_holds_what_was_acknowledged_before_it_and_the_next_holds_the_rest(
    pipeline: Pipeline,
) -> None:
    before = [session_body() for _ in range(5)]
    for session in before:
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body(), event_body()])

    first = pipeline.release(new_id()).json()

    after = session_body()
    pipeline.register(after)
    pipeline.add_events(after["session_id"], [event_body()])
    second = pipeline.release(new_id()).json()
    assert (first["session_count"], first["event_count"]) == (5, 10)
    assert {s["session_id"] for s in pipeline.batch_sessions(first["batch_id"])} == {
        s["session_id"] for s in before
    }
    assert (second["session_count"], second["event_count"]) == (1, 1)
    [only] = pipeline.batch_sessions(second["batch_id"])
    assert only["session_id"] == after["session_id"]


def test_a_released_session_with_new_events_goes_again_whole_as_a_repeat(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    returning, quiet = session_body(), session_body()
    for session in (returning, quiet):
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body()])
    first = pipeline.release(new_id()).json()
    new_click = event_body()
    pipeline.add_events(returning["session_id"], [new_click])

    second = pipeline.release(new_id()).json()

    assert first["repeat_session_count"] == 0
    assert (second["session_count"], second["repeat_session_count"]) == (1, 1)
    [again] = pipeline.batch_sessions(second["batch_id"])
    assert again["session_id"] == returning["session_id"]
    assert again["is_repeat"] is True
    assert again["event_count"] == 2, "the whole history goes again"
    assert again["events"][-1]["event_id"] == new_click["event_id"]
    assert [e["is_new"] for e in again["events"]] == [False, True], "the new click is marked"
    assert (again["new_event_count"], again["previous_batch_id"]) == (1, first["batch_id"])
    before = pipeline.batch_sessions(first["batch_id"])
    assert sorted(s["session_id"] for s in before) == sorted(
        s["session_id"] for s in (returning, quiet)
    )
    assert [s["is_repeat"] for s in before] == [False, False]
    assert _announced(pipeline, codec, 2) == [first["batch_id"], second["batch_id"]]


def _publish_received_at(
    settings: Settings, session: dict[str, Any], events: list[dict[str, Any]], when: float
) -> None:
    """Publish a session and its events as the gateway would have accepted them at ``when``
    (UTC seconds): the same validation and messages, an earlier receive time."""
    models = request_models(Limits.from_settings(settings))
    messages = IngestMessages(AvroCodec(), Topics(settings.topic_prefix))
    outgoing = [
        messages.session(models.SessionIn.model_validate(session), now=when).message,
        *messages.events(
            models.EventsIn.model_validate({"session_id": session["session_id"], "events": events}),
            now=when,
        ),
    ]
    producer = Producer(settings.kafka_producer_config())
    for message in outgoing:
        producer.produce(message.topic, message.value, key=message.key)
        # In order: events an hour old read before their registration would be due to
        # expire at the next tick (they waited an hour, as far as their times say).
        assert producer.flush(30) == 0


def test_min_idle_seconds_leaves_active_sessions_for_the_next_release(pipeline: Pipeline) -> None:
    # Idleness is the gateway's receive time against the release's request time. ``idle``
    # was received longer than min_idle ago (published with that receive time, no sleep);
    # ``active`` now, an hour within min_idle of the release, whatever the machine's pace.
    min_idle = 3600
    idle, active = session_body(), session_body()
    when = time.time() - min_idle - 60
    _publish_received_at(pipeline.settings, idle, [], when)
    pipeline.wait_session(idle["session_id"])
    _publish_received_at(pipeline.settings, idle, [event_body()], when)
    pipeline.wait_session(idle["session_id"], events=1)
    pipeline.register(active)
    pipeline.add_events(active["session_id"], [event_body()])

    first_answer = pipeline.release(new_id(), min_idle_seconds=min_idle)
    second = pipeline.release(new_id()).json()

    assert first_answer.status_code == 200, "the idle session is released"
    first = first_answer.json()
    assert [s["session_id"] for s in pipeline.batch_sessions(first["batch_id"])] == [
        idle["session_id"]
    ]
    [left] = pipeline.batch_sessions(second["batch_id"])
    assert left["session_id"] == active["session_id"]
    assert left["is_repeat"] is False, "never released before"


def test_twenty_identical_concurrent_releases_make_one_batch(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    for _ in range(3):
        session = session_body()
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body()])
    release_id = new_id()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: pipeline.release(release_id), range(20)))

    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["batch_id"] for a in answers}) == 1
    batch_id = answers[0].json()["batch_id"]
    with MongoClient(pipeline.settings.mongodb_url) as client:
        batches = list(client[pipeline.settings.mongodb_database].batches.find())
    assert [str(b["_id"]) for b in batches] == [batch_id]
    assert _announced(pipeline, codec, 1) == [batch_id]
    assert len(pipeline.batch_sessions(batch_id)) == 3
    assert pipeline.release(release_id).json() == answers[0].json(), "and later, the same answer"


def test_nothing_to_release_is_404_creates_no_batch_and_keeps_the_release_id_free(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    release_id = new_id()

    nothing = pipeline.release(release_id)

    assert nothing.status_code == 404
    assert list(nothing.json()) == ["detail"], "no batch to name"
    assert "nothing to release" in nothing.json()["detail"]
    with MongoClient(pipeline.settings.mongodb_url) as client:
        db = client[pipeline.settings.mongodb_database]
        # What is left is the record of the empty answer (it expires), not a batch, and it
        # does not hold the release_id.
        [empty] = db.batches.find()
        assert (empty["status"], empty["empty_release_id"]) == ("empty", release_id)
        assert "release_id" not in empty
    assert pipeline.batch(str(empty["_id"])).status_code == 404, "no batch to read"
    session = session_body()
    pipeline.register(session)
    later = pipeline.release(release_id)
    assert later.status_code == 200
    assert later.json()["session_count"] == 1
    assert later.json()["batch_id"] != str(empty["_id"])
    assert _announced(pipeline, codec, 1) == [later.json()["batch_id"]]


def test_a_release_still_waiting_for_a_partition_answers_202_then_completes_on_its_own(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    # Two workers, one paused: its partitions cannot write their part until it resumes, so
    # the release is still releasing when the wait ends, however fast the machine.
    settings = settings_factory(tick_interval_seconds=0.5, release_wait_seconds=1.0)
    first = worker_factory(settings).start()
    second = worker_factory(settings).start()
    wait_until_both_have_partitions(first, second)
    _, follower = leader_and_follower(first, second)
    ids = publish_sessions(settings, sessions=60, events_each=2)

    with gateway_client(settings, [first, second]) as gateway:
        pipeline = Pipeline(settings, gateway, [first, second])
        pipeline.wait_session(ids[-1], events=2)
        assert follower.pid is not None
        os.kill(follower.pid, signal.SIGSTOP)
        try:
            accepted = gateway.post(RELEASE_URL, json={"release_id": new_id()})
            waiting = pipeline.batch(accepted.json()["batch_id"]).json()
        finally:
            os.kill(follower.pid, signal.SIGCONT)

        assert accepted.status_code == 202, accepted.text
        answer = accepted.json()
        assert answer["status"] == "releasing"
        assert answer["session_count"] is None
        assert waiting["status"] == "releasing", "nothing completes it while a part is missing"
        assert waiting["waiting_partitions"], waiting
        done = eventually(
            lambda: pipeline.batch(answer["batch_id"]).json()["status"] == "released", timeout=60
        )
        assert done
        assert pipeline.batch(answer["batch_id"]).json()["session_count"] == 60


def test_reading_a_batch_pages_by_session_number(pipeline: Pipeline) -> None:
    sessions = [session_body() for _ in range(7)]
    for session in sessions:
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body() for _ in range(3)])
    batch_id = pipeline.release(new_id()).json()["batch_id"]

    pages = []
    after = 0
    while True:
        page = pipeline.gateway.get(
            BATCH_SESSIONS_URL,
            params={"batch_id": batch_id, "after_number": after, "limit": 3, "events_limit": 2},
        ).json()
        if not page["sessions"]:
            assert page["last_number"] == after
            break
        pages.append(page["sessions"])
        after = page["last_number"]

    assert [len(p) for p in pages] == [3, 3, 1]
    read = [s for page in pages for s in page]
    numbers = [s["session_number"] for s in read]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 7
    assert {s["session_id"] for s in read} == {s["session_id"] for s in sessions}
    assert all(len(s["events"]) == 2 and s["event_count"] == 3 for s in read)


def test_reading_an_unknown_or_malformed_batch(pipeline: Pipeline) -> None:
    unknown = "0123456789abcdef01234567"

    assert pipeline.batch(unknown).status_code == 404
    assert pipeline.batch("not-an-object-id").status_code == 422
    assert pipeline.gateway.get(BATCH_SESSIONS_URL, params={"batch_id": unknown}).status_code == 404
    assert pipeline.gateway.get(BATCH_SESSIONS_URL, params={"batch_id": "xyz"}).status_code == 422
    assert pipeline.release("").status_code == 422
    assert pipeline.release(new_id(), min_idle_seconds=-1).status_code == 422

"""Forgetting a user: their sessions leave the tables, every released batch (whose counts
and content digest follow), the exports and the releases to come; other users' stay."""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from batches.store import BatchStore
from schemas import Topics
from tests.consumers.test_batch_export import clickstream
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import (
    Pipeline,
    eventually,
    gateway_client,
    leader_and_follower,
    wait_until_both_have_partitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from schemas import AvroCodec
    from tests.utils.pipeline import Worker

FORGET_URL = "/api/v1/clickstream/internal/users/forget"


def with_click(pipeline: Pipeline, session: dict[str, Any]) -> str:
    pipeline.register(session)
    pipeline.add_events(session["session_id"], [event_body()])
    return str(session["session_id"])


def two_batches_and_the_tables(pipeline: Pipeline, user: str, other: str) -> dict[str, Any]:
    """The user's sessions: one in the first batch, one in both (a repeat in the second),
    one in the second only, one only in the tables; the other user's in the first batch."""
    once, twice, later, pending = (session_body(user_id=user) for _ in range(4))
    kept = [with_click(pipeline, session_body(user_id=other)) for _ in range(2)]
    with_click(pipeline, once)
    with_click(pipeline, twice)
    first = pipeline.release(new_id()).json()
    pipeline.add_events(twice["session_id"], [event_body()])
    with_click(pipeline, later)
    second = pipeline.release(new_id()).json()
    with_click(pipeline, pending)
    pipeline.wait_session(pending["session_id"], events=1)
    return {
        "first": first,
        "second": second,
        "user_sessions": [s["session_id"] for s in (once, twice, later, pending)],
        "kept": kept,
    }


def released_ids(pipeline: Pipeline, batch_id: str) -> set[str]:
    return {s["session_id"] for s in pipeline.batch_sessions(batch_id)}


def test_a_forgotten_user_is_gone_everywhere_and_others_stay(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    codec: AvroCodec,
    tmp_path: Any,
) -> None:
    settings = settings_factory(tick_interval_seconds=0.5, orphan_event_wait_seconds=1.0)
    worker = worker_factory(settings).start()
    user, other = new_id(), new_id()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        made = two_batches_and_the_tables(pipeline, user, other)
        first, second = made["first"]["batch_id"], made["second"]["batch_id"]
        digest_before = pipeline.batch(first).json()["content_digest"]

        answer = gateway.post(FORGET_URL, json={"user_id": user})
        # A click of a forgotten session after the erasure: dropped, not dead-lettered.
        late = gateway.post(
            "/api/v1/clickstream/session/events",
            json={"session_id": made["user_sessions"][3], "events": [event_body()]},
        )
        receipt = gateway.get(FORGET_URL, params={"request_id": answer.json()["request_id"]})

        assert answer.status_code == 200, answer.text
        assert late.status_code == 200
        assert receipt.json() == answer.json()
        assert answer.json()["status"] == "forgotten"
        assert answer.json()["table_session_count"] == 4
        assert answer.json()["batch_session_counts"] == {first: 2, second: 2}
        for session_id in made["user_sessions"]:
            assert pipeline.session(session_id).status_code == 404, session_id
        for session_id in made["kept"]:
            assert pipeline.session(session_id).status_code == 200
        assert released_ids(pipeline, first) == set(made["kept"])
        assert released_ids(pipeline, second) == set()
        batch = pipeline.batch(first).json()
        assert (batch["session_count"], batch["event_count"]) == (2, 2)
        assert batch["erased_session_count"] == 2
        assert batch["content_digest"] not in (None, digest_before), "computed again"

        # Exports check the new digest; the next release holds none of the user's sessions.
        exported = clickstream(settings, "batch", "export", first, "-o", str(tmp_path / "b.jsonl"))
        assert exported.returncode == 0, exported.stderr
        assert f"content digest {batch['content_digest']} (checked)" in exported.stdout
        lines = (tmp_path / "b.jsonl").read_text().splitlines()
        assert {json.loads(line)["session_id"] for line in lines} == set(made["kept"])
        pipeline.add_events(made["kept"][0], [event_body()])
        third = pipeline.release(new_id()).json()
        assert released_ids(pipeline, third["batch_id"]) == {made["kept"][0]}

        eventually(lambda: "erased_dropped=1" in worker.log(), timeout=30)
    dead_letter = Topics(settings.topic_prefix).dead_letter
    assert TopicReader(settings.kafka_common_config(), codec).read(dead_letter) == []


def test_pseudonymous_user_ids_are_forgotten_by_the_raw_id(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_factory(tick_interval_seconds=0.5, user_id_key="k" * 32)
    worker = worker_factory(settings).start()
    user = new_id()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        session_id = with_click(pipeline, session_body(user_id=user))
        shown = pipeline.wait_session(session_id, events=1)
        released = pipeline.release(new_id()).json()

        answer = gateway.post(FORGET_URL, json={"user_id": user}).json()

    assert shown["user_id"] != user, "stored as its pseudonym"
    assert answer["table_session_count"] == 1
    assert answer["batch_session_counts"] == {released["batch_id"]: 1}


def test_an_erasure_completes_across_a_worker_killed_in_the_middle(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    # Two workers, the one without the coordinator paused: a release and then the erasure
    # wait for its partitions; it is killed there and comes back, and both complete.
    settings = settings_factory(tick_interval_seconds=0.5, release_wait_seconds=1.0)
    first = worker_factory(settings).start()
    second = worker_factory(settings).start()
    wait_until_both_have_partitions(first, second)
    leader, follower = leader_and_follower(first, second)
    user = new_id()
    with gateway_client(settings, [first, second]) as gateway:
        pipeline = Pipeline(settings, gateway, [first, second])
        sessions = [with_click(pipeline, session_body(user_id=user)) for _ in range(12)]
        kept = with_click(pipeline, session_body())
        batch_id = pipeline.release(new_id()).json()["batch_id"]
        # Released (it may answer 202 with the wait this short): the next clicks are after
        # its cut, in the next release.
        eventually(lambda: pipeline.batch(batch_id).json().get("status") == "released", 60)
        for session_id in [*sessions, kept]:  # each goes again into the next release
            pipeline.add_events(session_id, [event_body()])
        pipeline.wait_session(kept, events=2)
        assert follower.pid is not None
        os.kill(follower.pid, signal.SIGSTOP)
        try:
            running = pipeline.release(new_id())
            waiting = gateway.post(FORGET_URL, json={"user_id": user})
        finally:
            follower.kill()
        back = worker_factory(settings, restarting=follower).start()
        pipeline = Pipeline(settings, gateway, [leader, back])

        assert (running.status_code, waiting.status_code) == (202, 202), waiting.text
        assert waiting.json()["status"] == "forgetting"
        request_id = waiting.json()["request_id"]

        def receipt() -> dict[str, Any] | None:
            answer = gateway.get(FORGET_URL, params={"request_id": request_id}).json()
            return answer if answer["status"] == "forgotten" else None

        done = eventually(receipt, timeout=60)
        second_id = running.json()["batch_id"]
        eventually(lambda: pipeline.batch(second_id).json().get("status") == "released", 60)
        assert done["table_session_count"] == 12
        assert done["batch_session_counts"][batch_id] == 12
        for session_id in sessions:
            assert pipeline.session(session_id).status_code == 404
        assert released_ids(pipeline, batch_id) == {kept}
        assert released_ids(pipeline, second_id) == {kept}, "the release running meanwhile"
    store = BatchStore.from_settings(settings)
    try:
        for batch in (batch_id, second_id):
            assert [s["session_id"] for s in store.iter_sessions(ObjectId(batch))] == [kept]
    finally:
        store.close()

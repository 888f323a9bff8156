"""Nothing lost, nothing doubled: worker crashes, restarts and failover."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

import httpx
from pymongo import MongoClient

from schemas import SchemaName, Topics
from tests.utils.bulk import publish_sessions
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import (
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
    from schemas import AvroCodec
    from tests.utils.pipeline import Worker


# Enough that the leader is likely still writing its part when it is killed.
SESSIONS = 3000


def _batch_document(settings: Settings, batch_id: str) -> dict[str, object] | None:
    from bson import ObjectId

    with MongoClient(settings.mongodb_url) as client:
        return client[settings.mongodb_database].batches.find_one({"_id": ObjectId(batch_id)})


def test_a_worker_killed_during_a_release_leaves_a_complete_batch_once_restarted(
    stream_settings: Settings,
    worker_factory: Callable[..., Worker],
    codec: AvroCodec,
) -> None:
    stream_settings = stream_settings.model_copy(update={"release_wait_seconds": 1.0})
    first = worker_factory(stream_settings).start()
    second = worker_factory(stream_settings).start()
    wait_until_both_have_partitions(first, second)
    leader, follower = leader_and_follower(first, second)
    ids = publish_sessions(stream_settings, sessions=SESSIONS, events_each=2)
    with gateway_client(stream_settings, [first, second]) as gateway:
        Pipeline(stream_settings, gateway, [first, second]).wait_session(
            ids[-1], events=2, timeout=60
        )
        assert follower.pid is not None
        # The follower paused holds the release open, however fast the machine: the kill of
        # the leader (the coordinator, and the owner of the other partitions) lands in it.
        os.kill(follower.pid, signal.SIGSTOP)
        try:
            accepted = gateway.post(RELEASE_URL, json={"release_id": new_id()})
            assert accepted.status_code == 202, accepted.text
            batch_id = accepted.json()["batch_id"]
            leader.kill()
            at_kill = _batch_document(stream_settings, batch_id)
        finally:
            os.kill(follower.pid, signal.SIGCONT)

    assert at_kill is not None
    assert at_kill["status"] == "releasing", "the kill must land during the release"
    restarted = worker_factory(stream_settings, restarting=leader).start()
    with gateway_client(stream_settings, [restarted, follower]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [restarted, follower])
        eventually(lambda: pipeline.batch(batch_id).json()["status"] == "released", timeout=120)
        answer = pipeline.batch(batch_id).json()
        released = pipeline.batch_sessions(batch_id, page_size=1000)

    assert (answer["session_count"], answer["event_count"]) == (SESSIONS, 2 * SESSIONS)
    counted = Counter(s["session_id"] for s in released)
    assert set(counted) == set(ids), "no session missing"
    assert max(counted.values()) == 1, "no session doubled"
    assert all(s["event_count"] == 2 and len(s["events"]) == 2 for s in released)
    assert len({s["session_number"] for s in released}) == SESSIONS
    reader = TopicReader(stream_settings.kafka_common_config(), codec)
    batches_topic = Topics(stream_settings.topic_prefix).batches
    # The batch is marked released in MongoDB before its announcement's transaction commits.
    announced = eventually(lambda: reader.read(batches_topic) or None, timeout=30)
    assert [(m.name, m.record["batch_id"]) for m in announced] == [
        (SchemaName.RELEASE_OUTCOME, batch_id),
        (SchemaName.BATCH_RELEASED, batch_id),
    ], "announced once"


def test_tables_recover_after_a_restart_and_a_crash(
    stream_settings: Settings, worker_factory: Callable[..., Worker]
) -> None:
    sessions = [session_body() for _ in range(20)]
    clicks = {s["session_id"]: [event_body(), event_body()] for s in sessions}
    worker = worker_factory(stream_settings).start()
    with gateway_client(stream_settings, [worker]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [worker])
        for session in sessions:
            pipeline.register(session)
            pipeline.add_events(session["session_id"], clicks[session["session_id"]])
        for session in sessions:
            pipeline.wait_session(session["session_id"], events=2)
    worker.stop()

    restarted = worker_factory(stream_settings, restarting=worker).start()
    with gateway_client(stream_settings, [restarted]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [restarted])
        for session in sessions:
            shown = pipeline.session(session["session_id"]).json()
            assert [e["event_id"] for e in shown["events"]] == [
                c["event_id"] for c in clicks[session["session_id"]]
            ]
        # A retried request after the restart is still recognised.
        retried = sessions[0]["session_id"]
        pipeline.add_events(retried, [*clicks[retried], event_body()])
        pipeline.wait_session(retried, events=3)
    restarted.kill()

    after_crash = worker_factory(stream_settings, restarting=restarted).start()
    with gateway_client(stream_settings, [after_crash]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [after_crash])
        assert pipeline.wait_session(retried)["event_count"] == 3
        answer = pipeline.release(new_id()).json()
    assert (answer["session_count"], answer["event_count"]) == (20, 41)


def test_a_worker_on_an_empty_disk_rebuilds_its_state_from_the_changelog(
    stream_settings: Settings, worker_factory: Callable[..., Worker]
) -> None:
    """A new pod, or a lost volume: the same worker id on an empty data dir restores its
    partitions from the changelog alone, and nothing acknowledged is missing or doubled."""
    sessions = [session_body() for _ in range(40)]
    clicks = {s["session_id"]: [event_body(), event_body()] for s in sessions}
    worker = worker_factory(stream_settings).start()
    with gateway_client(stream_settings, [worker]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [worker])
        for session in sessions[:20]:
            pipeline.register(session)
            pipeline.add_events(session["session_id"], clicks[session["session_id"]])
        released = pipeline.release(new_id()).json()
        for session in sessions[20:]:
            pipeline.register(session)
            pipeline.add_events(session["session_id"], clicks[session["session_id"]])
        pipeline.wait_session(sessions[-1]["session_id"], events=2)
    worker.kill()

    moved = worker_factory(stream_settings, restarting=worker, new_disk=True).start()
    assert moved.data_dir != worker.data_dir
    with gateway_client(stream_settings, [moved]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [moved])
        for session in sessions:
            shown = pipeline.session(session["session_id"]).json()
            assert [e["event_id"] for e in shown["events"]] == [
                c["event_id"] for c in clicks[session["session_id"]]
            ]
        answer = pipeline.release(new_id()).json()
        again = pipeline.batch_sessions(answer["batch_id"])
    assert released["session_count"] == 20
    assert (answer["session_count"], answer["event_count"]) == (20, 40), "only the unreleased"
    assert {s["session_id"] for s in again} == {s["session_id"] for s in sessions[20:]}
    assert "partition restored" in moved.log()


def test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops(
    stream_settings: Settings, worker_factory: Callable[..., Worker]
) -> None:
    first = worker_factory(stream_settings).start()
    second = worker_factory(stream_settings).start()

    wait_until_both_have_partitions(first, second)
    sessions = [session_body() for _ in range(30)]
    with gateway_client(stream_settings, [first, second]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [first, second])
        for session in sessions:
            pipeline.register(session)
            pipeline.add_events(session["session_id"], [event_body()])
        for session in sessions:
            pipeline.wait_session(session["session_id"], events=1)
        partitions = {
            httpx.get(
                f"{w.url}/sessions/", params={"session_id": s["session_id"]}, timeout=5
            ).status_code
            for w in (first, second)
            for s in sessions
        }
        assert partitions == {200}, "either worker answers for every session"

    second.stop()
    with gateway_client(stream_settings, [first]) as gateway:
        pipeline = Pipeline(stream_settings, gateway, [first])
        for session in sessions:
            pipeline.add_events(session["session_id"], [event_body()])
        for session in sessions:
            pipeline.wait_session(session["session_id"], events=2, timeout=60)
        answer = pipeline.release(new_id()).json()
        released = pipeline.batch_sessions(answer["batch_id"])
    assert (answer["session_count"], answer["event_count"]) == (30, 60)
    assert sorted(s["session_id"] for s in released) == sorted(s["session_id"] for s in sessions)

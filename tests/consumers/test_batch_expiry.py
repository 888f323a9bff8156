"""Batches that expire: `clickstream batch delete`, CLICKSTREAM_BATCH_RETENTION_DAYS, and
the holds of followers that keep their batches; repeats survive their batch."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from batches.store import BatchStore
from consumers.batch_follower import BatchFollower
from tests.consumers.test_batch_export import clickstream
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import BATCH_SESSIONS_URL, Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker


def released_with_a_click(pipeline: Pipeline) -> tuple[str, str]:
    """A session with a click, released: (session_id, batch_id)."""
    session = session_body()
    pipeline.register(session)
    pipeline.add_events(session["session_id"], [event_body()])
    answer = pipeline.release(new_id())
    assert answer.status_code == 200, answer.text
    return session["session_id"], answer.json()["batch_id"]


def stored_documents(settings: Settings, batch_id: str) -> int:
    store = BatchStore.from_settings(settings)
    try:
        return sum(
            collection.count_documents({"batch_id": ObjectId(batch_id)})
            for collection in (store.sessions, store.event_chunks)
        )
    finally:
        store.close()


def test_a_deleted_batch_is_gone_and_its_session_comes_back_as_a_repeat(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    session_id, first = released_with_a_click(pipeline)

    deleted = clickstream(pipeline.settings, "batch", "delete", first)
    shown = pipeline.batch(first).json()
    pages = pipeline.gateway.get(BATCH_SESSIONS_URL, params={"batch_id": first})
    export = clickstream(pipeline.settings, "batch", "export", first, "-o", str(tmp_path / "b"))

    assert deleted.returncode == 0, deleted.stderr
    assert (shown["status"], shown["session_count"], shown["event_count"]) == ("expired", 1, 1)
    assert pages.status_code == 410
    assert export.returncode == 1
    assert f"batch {first} is expired" in export.stderr
    assert stored_documents(pipeline.settings, first) == 0

    pipeline.add_events(session_id, [event_body()])
    second = pipeline.release(new_id()).json()["batch_id"]
    [again] = pipeline.batch_sessions(second)
    assert (again["is_repeat"], again["previous_batch_id"]) == (True, first)
    assert [e["is_new"] for e in again["events"]] == [False, True], "its history from the tables"


def test_batches_past_their_retention_expire_unless_a_follower_still_needs_them(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    settings = settings_factory(tick_interval_seconds=0.5, batch_retention_days=1 / 86_400)
    worker = worker_factory(settings).start()
    group = f"trainer-{new_id()}"
    follower = BatchFollower(settings, tmp_path / "out", group_id=group)
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        # Held from the start: nothing expires before the follower exported it.
        holds = clickstream(settings, "batch", "holds")
        assert json.loads(holds.stdout) == {}
        list(follower.follow(idle_timeout=0.5))
        _, first = released_with_a_click(pipeline)
        exported = [m.batch_id for m in follower.follow(idle_timeout=3)]
        _, second = released_with_a_click(pipeline)
        released_at = pipeline.batch(second).json()["released_at"]
        eventually(lambda: time.time() > released_at + 2, timeout=10)  # both past retention

        def status(batch_id: str) -> Any:
            return pipeline.batch(batch_id).json()["status"]

        eventually(lambda: status(first) == "expired", timeout=30)
        assert exported == [first]
        assert status(second) == "released", "the follower has not exported it yet"
        assert json.loads(clickstream(settings, "batch", "holds").stdout).keys() == {group}

        let_go = clickstream(settings, "batch", "unhold", group)
        assert let_go.returncode == 0, let_go.stderr
        eventually(lambda: status(second) == "expired", timeout=30)
    assert stored_documents(settings, first) == stored_documents(settings, second) == 0

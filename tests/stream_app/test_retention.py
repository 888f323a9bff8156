"""Retention: a released, quiet session leaves the worker's tables; clicks that come for it
later are not lost, and only they are new in the next batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker


def _released(pipeline: Pipeline) -> tuple[str, list[dict[str, Any]]]:
    """Release now; the batch's id and sessions once it is released."""
    answer = pipeline.release(new_id())
    assert answer.status_code in (200, 202), answer.text
    batch_id = answer.json()["batch_id"]
    eventually(lambda: pipeline.batch(batch_id).json()["status"] == "released", timeout=60)
    return batch_id, pipeline.batch_sessions(batch_id)


def test_a_retired_session_that_gets_clicks_again_is_released_as_a_repeat_with_only_them_new(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_factory(
        session_retention_seconds=1, orphan_event_wait_seconds=2, tick_interval_seconds=0.5
    )
    worker = worker_factory(settings).start()
    session, first = session_body(), event_body()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [first])
        pipeline.wait_session(session["session_id"], events=1)
        first_batch, [_] = _released(pipeline)
        eventually(lambda: pipeline.session(session["session_id"]).status_code == 404, timeout=60)

        later = event_body()
        pipeline.add_events(session["session_id"], [first, later])  # the old one sent again
        shown = pipeline.wait_session(session["session_id"], events=2, timeout=60)
        _, [again] = _released(pipeline)

    assert [e["event_id"] for e in shown["events"]] == [first["event_id"], later["event_id"]]
    assert (again["is_repeat"], again["previous_batch_id"]) == (True, first_batch)
    assert [(e["event_id"], e["is_new"]) for e in again["events"]] == [
        (first["event_id"], False),
        (later["event_id"], True),
    ]
    assert again["search_query"] == session["search_query"]


def test_a_worker_restarted_while_nothing_comes_in_still_retires_released_sessions(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    # A session retires only once its messages lie below the committed offsets: a worker
    # restarted on idle partitions must know the group's offsets without committing any.
    settings = settings_factory(session_retention_seconds=8, tick_interval_seconds=0.5)
    worker = worker_factory(settings).start()
    session = session_body()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body()])
        pipeline.wait_session(session["session_id"], events=1)
        _released(pipeline)
    worker.stop()

    restarted = worker_factory(settings, restarting=worker).start()
    with gateway_client(settings, [restarted]) as gateway:
        pipeline = Pipeline(settings, gateway, [restarted])
        assert pipeline.session(session["session_id"]).status_code == 200, "not retired yet"
        eventually(lambda: pipeline.session(session["session_id"]).status_code == 404, timeout=60)

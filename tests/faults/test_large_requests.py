"""Requests at the API's limits, many of them to one session: the worker keeps running and
everything acknowledged is released (before, a session's table value passed Kafka's 1 MB
limit and the worker crashed on every restart)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from deploy.local.servers import is_running
from tests.utils.payloads import event_body, new_id, session_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.utils.pipeline import Pipeline

REQUESTS = 8
EVENTS_PER_REQUEST = 1000  # CLICKSTREAM_MAX_EVENTS_PER_REQUEST
META = {"padding": "m" * 600}


def _of_size(size: int, build: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The body ``build(padding)`` whose JSON is exactly ``size`` bytes."""
    missing = size - len(json.dumps(build("")).encode())
    return build("p" * missing)


def test_requests_at_the_limits_keep_the_worker_running_and_are_all_released(
    pipeline: Pipeline,
) -> None:
    limit = pipeline.settings.max_body_bytes
    session = session_body()
    session_id = session["session_id"]
    pipeline.register(session)
    sent = []
    for _ in range(REQUESTS):
        events = [event_body(meta=META) for _ in range(EVENTS_PER_REQUEST)]
        body = {"session_id": session_id, "events": events}
        assert len(json.dumps(body)) < limit
        pipeline.add_events(session_id, events)
        sent.extend(e["event_id"] for e in events)
    largest_session = _of_size(limit, lambda pad: session_body(search_meta={"padding": pad}))
    pipeline.register(largest_session)
    event_session = session_body()
    pipeline.register(event_session)
    largest_event = _of_size(
        limit,
        lambda pad: {
            "session_id": event_session["session_id"],
            "events": [{"event_id": "e", "object_id": "o", "meta": {"padding": pad}}],
        },
    )
    response = pipeline.gateway.post("/api/v1/clickstream/session/events", json=largest_event)
    assert response.status_code == 200, response.text

    shown = pipeline.wait_session(session_id, events=REQUESTS * EVENTS_PER_REQUEST, timeout=120)
    pipeline.wait_session(event_session["session_id"], events=1)
    pipeline.wait_session(largest_session["session_id"])
    answer = pipeline.release(new_id())

    assert answer.status_code == 200, answer.text
    assert (answer.json()["session_count"], answer.json()["event_count"]) == (3, len(sent) + 1)
    released = {s["session_id"]: s for s in pipeline.batch_sessions(answer.json()["batch_id"])}
    assert [e["event_id"] for e in released[session_id]["events"]] == sent
    assert released[session_id]["events"][0]["meta"] == META
    assert (
        released[largest_session["session_id"]]["search_meta"] == (largest_session["search_meta"])
    )
    [big_event] = released[event_session["session_id"]]["events"]
    assert big_event["meta"] == largest_event["events"][0]["meta"]
    assert shown["event_count"] == len(sent)
    worker = pipeline.workers[0]
    assert worker.pid is not None
    assert is_running(worker.pid), "the worker kept running"
    assert "MessageSizeTooLarge" not in worker.log()


LARGE_CLICKS = 20
# Each request just under the body limit: together far past MongoDB's 16 MB per document.
LARGE_META_BYTES = 900_000


def test_a_session_larger_than_a_mongodb_document_is_released_whole_and_stops_nothing(
    pipeline: Pipeline,
) -> None:
    """Issue 17: 20 valid clicks of 900 KB each to one session crash-looped the worker on
    the release (its batch copy passed 16 MB). They are released whole, in chunks, and
    the pipeline goes on serving other sessions."""
    worker = pipeline.workers[0]
    pid = worker.pid
    session = session_body()
    session_id = session["session_id"]
    pipeline.register(session)
    sent = []
    for number in range(LARGE_CLICKS):
        event = event_body(meta={"n": number, "padding": "x" * LARGE_META_BYTES})
        assert len(json.dumps({"session_id": session_id, "events": [event]})) < 1_000_000
        pipeline.add_events(session_id, [event])
        sent.append(event["event_id"])
    pipeline.wait_session(session_id, events=LARGE_CLICKS, timeout=120)

    answer = pipeline.release(new_id())

    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert (batch["session_count"], batch["event_count"]) == (1, LARGE_CLICKS)
    assert batch["unreleasable_session_count"] == 0
    [released] = pipeline.batch_sessions(batch["batch_id"], page_size=1)
    assert [e["event_id"] for e in released["events"]] == sent
    assert [e["meta"]["n"] for e in released["events"]] == list(range(LARGE_CLICKS))
    assert all(len(e["meta"]["padding"]) == LARGE_META_BYTES for e in released["events"])
    page = pipeline.gateway.get(
        "/api/v1/clickstream/internal/batch/sessions",
        params={"batch_id": batch["batch_id"], "events_limit": 7},
    ).json()
    assert [e["event_id"] for e in page["sessions"][0]["events"]] == sent[:7]
    # The pipeline goes on: a session registered afterwards is joined within seconds.
    later = session_body()
    pipeline.register(later)
    click = event_body()
    pipeline.add_events(later["session_id"], [click])
    shown = pipeline.wait_session(later["session_id"], events=1, timeout=10)
    assert shown["events"][0]["event_id"] == click["event_id"]
    assert pid is not None
    assert worker.pid == pid
    assert is_running(pid), "never restarted"

"""Bad input gets a clear answer and publishes nothing: every request is all or nothing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.utils.payloads import event_body, events_body, new_id, session_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi.testclient import TestClient

    from schemas import Topics
    from tests.utils.kafka import TopicReader

SESSION_URL = "/api/v1/clickstream/session"
EVENTS_URL = "/api/v1/clickstream/session/events"
TOO_LONG = "x" * 129


def _with_event(**fields: Any) -> Callable[[], dict[str, Any]]:
    """An events body whose second of three events has ``fields`` (None removes a field)."""

    def build() -> dict[str, Any]:
        body = events_body(new_id(), count=3)
        event = body["events"][1]
        for name, value in fields.items():
            if value is None:
                event.pop(name, None)
            else:
                event[name] = value
        return body

    return build


def _session_with(**fields: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        body = session_body()
        for name, value in fields.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return body

    return build


def _with_rank(rank: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        body = session_body()
        body["search_results"][1]["rank"] = rank
        return body

    return build


# (url, body builder, field path the answer must name)
REFUSED_422 = {
    "missing session_id": (SESSION_URL, _session_with(session_id=None), ["body", "session_id"]),
    "missing search_results": (
        SESSION_URL,
        _session_with(search_results=None),
        ["body", "search_results"],
    ),
    "search_results not a list": (
        SESSION_URL,
        _session_with(search_results={"object_id": "o"}),
        ["body", "search_results"],
    ),
    "result without object_id": (
        SESSION_URL,
        _session_with(search_results=[{"object_id": "o"}, {"rank": 1.0}]),
        ["body", "search_results", 1, "object_id"],
    ),
    "rank not a number": (SESSION_URL, _with_rank("high"), ["body", "search_results", 1, "rank"]),
    "search_meta not an object": (
        SESSION_URL,
        _session_with(search_meta=[1, 2]),
        ["body", "search_meta"],
    ),
    "session_id a number": (SESSION_URL, _session_with(session_id=42), ["body", "session_id"]),
    "empty session_id": (SESSION_URL, _session_with(session_id=""), ["body", "session_id"]),
    "over-long session_id": (
        SESSION_URL,
        _session_with(session_id=TOO_LONG),
        ["body", "session_id"],
    ),
    "over-long user_id": (SESSION_URL, _session_with(user_id=TOO_LONG), ["body", "user_id"]),
    "session created 13 hours ago": (
        SESSION_URL,
        lambda: session_body(created_at=int(time.time()) - 13 * 3600),
        ["body", "created_at"],
    ),
    "session created 10 minutes ahead": (
        SESSION_URL,
        lambda: session_body(created_at=int(time.time()) + 600),
        ["body", "created_at"],
    ),
    "created_at not an integer": (
        SESSION_URL,
        _session_with(created_at="yesterday"),
        ["body", "created_at"],
    ),
    "missing events": (EVENTS_URL, lambda: {"session_id": new_id()}, ["body", "events"]),
    "events not a list": (
        EVENTS_URL,
        lambda: {"session_id": new_id(), "events": event_body()},
        ["body", "events"],
    ),
    "missing event_id": (EVENTS_URL, _with_event(event_id=None), ["body", "events", 1, "event_id"]),
    "missing object_id": (
        EVENTS_URL,
        _with_event(object_id=None),
        ["body", "events", 1, "object_id"],
    ),
    "empty event_id": (EVENTS_URL, _with_event(event_id=""), ["body", "events", 1, "event_id"]),
    "over-long event_id": (
        EVENTS_URL,
        _with_event(event_id=TOO_LONG),
        ["body", "events", 1, "event_id"],
    ),
    "over-long object_id": (
        EVENTS_URL,
        _with_event(object_id=TOO_LONG),
        ["body", "events", 1, "object_id"],
    ),
    "event_type not a string": (
        EVENTS_URL,
        _with_event(event_type=["click"]),
        ["body", "events", 1, "event_type"],
    ),
    "meta not an object": (EVENTS_URL, _with_event(meta="{}"), ["body", "events", 1, "meta"]),
    "item_info not an object": (
        EVENTS_URL,
        _with_event(item_info=3),
        ["body", "events", 1, "item_info"],
    ),
    "event from 13 hours ago": (
        EVENTS_URL,
        _with_event(created_at=int(time.time()) - 13 * 3600),
        ["body", "events", 1, "created_at"],
    ),
    "event 10 minutes ahead": (
        EVENTS_URL,
        # Built when the test runs: a time taken at collection is no longer ahead by then.
        lambda: _with_event(created_at=int(time.time()) + 600)(),
        ["body", "events", 1, "created_at"],
    ),
    "1001 events": (EVENTS_URL, lambda: events_body(new_id(), count=1001), ["body", "events"]),
    "over-long session_id of events": (
        EVENTS_URL,
        lambda: events_body(TOO_LONG),
        ["body", "session_id"],
    ),
}


@pytest.mark.parametrize("case", REFUSED_422)
def test_contract_violations_are_422_naming_the_field_and_publish_nothing(
    case: str, gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    url, build, path = REFUSED_422[case]

    response = gateway.post(url, json=build())

    assert response.status_code == 422, response.text
    paths = [error["loc"] for error in response.json()["detail"]]
    assert path in paths
    assert all(error["msg"] for error in response.json()["detail"])
    assert published.count(topics.sessions) == 0
    assert published.count(topics.events) == 0


# Non-finite numbers are not JSON, but parsers accept these literals; they must not pass.
NON_FINITE = {
    "rank NaN": (SESSION_URL, '"rank": NaN', ["body", "search_results", 0, "rank"]),
    "rank Infinity": (SESSION_URL, '"rank": Infinity', ["body", "search_results", 0, "rank"]),
    "rank overflowing to infinity": (
        SESSION_URL,
        '"rank": 1e400',
        ["body", "search_results", 0, "rank"],
    ),
    "NaN inside meta": (
        SESSION_URL,
        '"rank": 0.5, "meta": {"score": [1, NaN]}',
        ["body", "search_results", 0, "meta"],
    ),
}


@pytest.mark.parametrize("case", NON_FINITE)
def test_non_finite_numbers_are_422(
    case: str, gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    url, result_fields, path = NON_FINITE[case]
    body = (
        f'{{"session_id": "{new_id()}", "search_query": "q", '
        f'"search_results": [{{"object_id": "o", {result_fields}}}]}}'
    )

    response = gateway.post(url, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert path in [error["loc"] for error in response.json()["detail"]]
    assert published.count(topics.sessions) == 0


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"session_id": "s",', b"", b"\xff\xfe", b"[1, 2"],
    ids=["garbage", "truncated", "empty", "not utf-8", "unclosed list"],
)
@pytest.mark.parametrize("url", [SESSION_URL, EVENTS_URL])
def test_malformed_json_is_400_and_publishes_nothing(
    url: str, body: bytes, gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    response = gateway.post(url, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert "Malformed JSON" in response.json()["detail"]
    assert published.count(topics.sessions) + published.count(topics.events) == 0


def test_json_that_is_not_an_object_is_422(gateway: TestClient) -> None:
    response = gateway.post(SESSION_URL, json=[session_body()])

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_body_over_the_size_limit_is_413_and_publishes_nothing(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    body = events_body(new_id(), count=1)
    body["events"][0]["meta"] = {"padding": "x" * (1024 * 1024)}

    response = gateway.post(EVENTS_URL, json=body)

    assert response.status_code == 413
    assert "1000000 bytes" in response.json()["detail"]
    assert published.count(topics.events) == 0


def test_chunked_body_over_the_size_limit_is_413(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"session_id": "s", "events": [], "pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = gateway.post(EVENTS_URL, content=chunks())

    assert response.status_code == 413
    assert published.count(topics.events) == 0


def test_limits_are_inclusive(gateway: TestClient, topics: Topics, published: TopicReader) -> None:
    longest = "y" * 128
    body = events_body(longest, count=1000)
    body["events"][0]["event_id"] = longest
    body["events"][1]["created_at"] = int(time.time()) - 12 * 3600 + 60
    body["events"][2]["created_at"] = int(time.time()) + 240

    response = gateway.post(EVENTS_URL, json=body)

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1000
    assert len(published.read_events(topics.events)) == 1000

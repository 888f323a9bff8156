"""The OpenAPI document says exactly what the API accepts: found by schemathesis, kept here
as plain cases against the real broker."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, events_body, new_id, session_body
from tests.utils.pipeline import EVENTS_URL, SESSION_URL

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from clickstream.settings import Settings
    from schemas import AvroCodec


@pytest.mark.parametrize(
    "result",
    [{"object_id": "o", "rank": False}, {"object_id": "o", "rank": "0.5"}, {"object_id": 7}],
    ids=["bool-rank", "string-rank", "number-id"],
)
def test_a_value_of_another_json_type_is_refused_not_converted(
    gateway: TestClient, settings: Settings, codec: AvroCodec, result: dict[str, Any]
) -> None:
    answer = gateway.post(SESSION_URL, json=session_body(search_results=[result]))

    assert answer.status_code == 422
    reader = TopicReader(settings.kafka_common_config(), codec)
    assert reader.count(Topics(settings.topic_prefix).sessions) == 0


@pytest.mark.parametrize("created_at", ["1795000000", 1795000000.5, True])
def test_created_at_must_be_an_integer(gateway: TestClient, created_at: object) -> None:
    assert gateway.post(SESSION_URL, json=session_body(created_at=created_at)).status_code == 422


def test_an_integer_written_as_a_whole_float_is_an_integer(gateway: TestClient) -> None:
    now = int(time.time())

    answer = gateway.post(SESSION_URL, json=session_body(created_at=float(now)))

    assert answer.status_code == 200
    assert answer.json()["created_at"] == now


def test_event_type_null_is_documented_and_taken_as_a_click(
    gateway: TestClient, settings: Settings, codec: AvroCodec
) -> None:
    document = gateway.get("/openapi.json").json()
    event_type = document["components"]["schemas"]["EventIn"]["properties"]["event_type"]
    body = events_body(new_id(), count=0)
    body["events"] = [event_body(event_type=None)]

    answer = gateway.post(EVENTS_URL, json=body)

    assert {"type": "null"} in event_type["anyOf"]
    assert event_type["default"] == "click"
    assert answer.status_code == 200
    [(_, event)] = TopicReader(settings.kafka_common_config(), codec).read_events(
        Topics(settings.topic_prefix).events
    )
    assert event["event_type"] == "click"


def test_the_documents_examples_are_accepted(gateway: TestClient) -> None:
    schemas = gateway.get("/openapi.json").json()["components"]["schemas"]

    session = gateway.post(SESSION_URL, json=schemas["SessionIn"]["examples"][0])
    events = gateway.post(EVENTS_URL, json=schemas["EventsIn"]["examples"][0])

    assert (session.status_code, events.status_code) == (200, 200)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", SESSION_URL, "GET, POST"),
        ("OPTIONS", SESSION_URL, "GET, POST"),
        ("GET", EVENTS_URL, "POST"),
        ("DELETE", "/health", "GET"),
    ],
)
def test_a_405_names_every_method_of_the_path(
    gateway: TestClient, method: str, path: str, allow: str
) -> None:
    answer = gateway.request(method, path)

    assert answer.status_code == 405
    assert answer.headers["Allow"] == allow

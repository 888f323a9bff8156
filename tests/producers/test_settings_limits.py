"""The gateway and the library honour the limits of the settings they are given, not those
of the environment at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from producers.exceptions import InvalidInputError
from producers.gateway import create_app
from producers.library import ClickstreamProducer
from producers.models import Limits, SessionIn, request_models
from schemas import Topics
from tests.utils.payloads import event_body, events_body, new_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.utils.kafka import TopicReader

SESSION_URL = "/api/v1/clickstream/session"
EVENTS_URL = "/api/v1/clickstream/session/events"


def test_gateway_refuses_more_events_than_its_settings_allow(
    settings_factory: Callable[..., Settings], published: TopicReader
) -> None:
    settings = settings_factory(max_events_per_request=3)
    with TestClient(create_app(settings)) as gateway:
        refused = gateway.post(EVENTS_URL, json=events_body(new_id(), count=4))
        accepted = gateway.post(EVENTS_URL, json=events_body(new_id(), count=3))
        document = gateway.get("/openapi.json").json()

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "events"]
    assert accepted.status_code == 200, accepted.text
    events_schema = document["components"]["schemas"]["EventsIn"]["properties"]["events"]
    assert events_schema["maxItems"] == 3
    assert len(published.read_events(Topics(settings.topic_prefix).events)) == 3


def test_gateway_with_default_settings_accepts_four_events(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    answer = gateway.post(EVENTS_URL, json=events_body(new_id(), count=4))

    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 4
    assert len(published.read_events(topics.events)) == 4


def test_gateway_checks_ids_against_its_settings(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(max_id_length=8)
    with TestClient(create_app(settings)) as gateway:
        long_event = gateway.post(
            EVENTS_URL, json={"session_id": "s", "events": [event_body(event_id="e" * 9)]}
        )
        long_query = gateway.get(SESSION_URL, params={"session_id": "s" * 9})
        document = gateway.get("/openapi.json").json()

    assert long_event.status_code == 422, long_event.text
    assert long_event.json()["detail"][0]["loc"] == ["body", "events", 0, "event_id"]
    assert long_query.status_code == 422, long_query.text
    assert long_query.json()["detail"][0]["loc"] == ["query", "session_id"]
    parameters = document["paths"][SESSION_URL]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maxLength") for p in parameters}["session_id"] == 8


def test_library_refuses_more_events_than_its_settings_allow(
    settings_factory: Callable[..., Settings], published: TopicReader
) -> None:
    settings = settings_factory(max_events_per_request=3)
    events = events_body(new_id(), count=4)["events"]

    with ClickstreamProducer(settings) as producer, pytest.raises(InvalidInputError) as refused:
        producer.add_events(new_id(), events)

    assert refused.value.errors[0]["loc"] == ("events",)
    assert published.count(Topics(settings.topic_prefix).events) == 0


def test_every_id_of_a_request_has_the_limit_it_is_given() -> None:
    """The models are declared once: an id nested anywhere (a result, sort_by) is bounded
    like the others, and the default limits are the classes as declared."""
    models = request_models(Limits(max_id_length=8))
    long = "x" * 9
    session = {
        "session_id": long,
        "search_query": "q",
        "search_results": [{"object_id": long}],
        "user_id": long,
        "sort_by": {"field": long},
    }

    with pytest.raises(ValidationError) as refused:
        models.SessionIn.model_validate(session)

    errors = refused.value.errors()
    assert {tuple(error["loc"]) for error in errors} == {
        ("session_id",),
        ("search_results", 0, "object_id"),
        ("user_id",),
        ("sort_by", "field"),
    }
    assert {error["msg"] for error in errors} == {"String should have at most 8 characters"}
    assert SessionIn.model_validate(session).session_id == long
    assert request_models(Limits()).SessionIn is SessionIn

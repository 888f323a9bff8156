"""The producer library validates like the gateway and publishes the same messages."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from producers.exceptions import InvalidInputError
from producers.gateway import create_app
from producers.library import ClickstreamProducer
from producers.models import EventIn
from tests.utils.payloads import events_body, session_body

if TYPE_CHECKING:
    from collections.abc import Iterator

    from clickstream.settings import Settings
    from schemas import Topics
    from tests.utils.kafka import TopicReader

STAMPED = ("received_at_ms",)


@pytest.fixture
def producer(settings: Settings) -> Iterator[ClickstreamProducer]:
    with ClickstreamProducer(settings) as producer:
        yield producer


def _without_stamps(record: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k not in STAMPED}


def test_library_publishes_what_the_gateway_publishes(
    producer: ClickstreamProducer, settings: Settings, topics: Topics, published: TopicReader
) -> None:
    session = session_body(search_meta={"lang": "en", "n": 2**70})
    events = events_body(session["session_id"], count=3)
    events["events"][0]["item_info"] = {"pos": 1}
    for event in events["events"]:  # a defaulted created_at could differ by a second
        event["created_at"] = session["created_at"]

    with TestClient(create_app(settings)) as gateway:
        assert gateway.post("/api/v1/clickstream/session", json=session).status_code == 200
        assert gateway.post("/api/v1/clickstream/session/events", json=events).status_code == 200
    accepted = producer.register_session(session)
    added = producer.add_events(session["session_id"], events["events"])

    assert accepted.session_id == session["session_id"]
    assert accepted.created_at == session["created_at"]
    assert added.accepted == 3
    via_gateway, via_library = published.read(topics.sessions)
    assert via_library.raw[:5] == via_gateway.raw[:5], "same schema id in the wire format"
    assert via_library.key == via_gateway.key
    assert via_library.partition == via_gateway.partition
    assert _without_stamps(via_library.record) == _without_stamps(via_gateway.record)
    from_gateway, from_library = published.read(topics.events)
    assert from_library.raw[:5] == from_gateway.raw[:5]
    assert from_library.key == from_gateway.key
    assert _without_stamps(from_library.record) == _without_stamps(from_gateway.record)
    assert len(from_library.record["events"]) == 3


def test_library_applies_the_defaults(
    producer: ClickstreamProducer, topics: Topics, published: TopicReader
) -> None:
    accepted = producer.add_events("s-1", [EventIn(event_id="e-1", object_id="o-1")])

    assert accepted.accepted == 1
    [(message, event)] = published.read_events(topics.events)
    assert event["event_type"] == "click"
    assert event["created_at"] > 0
    assert message.key == b"s-1"


def test_library_refuses_bad_input_and_publishes_nothing(
    producer: ClickstreamProducer, topics: Topics, published: TopicReader
) -> None:
    bad_events = [{"event_id": "e-1", "object_id": "o-1"}, {"event_id": "", "object_id": "o"}]

    with pytest.raises(InvalidInputError) as refused:
        producer.add_events("s-1", bad_events)
    with pytest.raises(InvalidInputError, match="session_id"):
        producer.register_session({"search_query": "q", "search_results": []})

    assert refused.value.errors[0]["loc"] == ("events", 1, "event_id")
    assert "events.1.event_id" in str(refused.value)
    assert published.count(topics.events) == 0
    assert published.count(topics.sessions) == 0


@pytest.mark.anyio
async def test_library_async_methods_publish(
    producer: ClickstreamProducer, topics: Topics, published: TopicReader
) -> None:
    session = session_body()

    await producer.register_session_async(session)
    added = await producer.add_events_async(
        session["session_id"], [{"event_id": "e", "object_id": "o"}]
    )

    assert added.accepted == 1
    assert published.count(topics.sessions) == 1
    assert published.count(topics.events) == 1


def test_with_a_user_id_key_no_raw_user_id_is_published(
    settings: Settings, topics: Topics, published: TopicReader
) -> None:
    keyed = settings.model_copy(update={"user_id_key": SecretStr("a key of the operator's")})
    raw = session_body(user_id="alice@example.com")
    again = session_body(user_id="alice@example.com")
    anonymous = session_body(user_id=None)

    with TestClient(create_app(keyed)) as gateway:
        for body in (raw, anonymous):
            assert gateway.post("/api/v1/clickstream/session", json=body).status_code == 200
    with ClickstreamProducer(keyed) as producer:
        producer.register_session(again)
    with ClickstreamProducer(settings) as producer:  # no key: as given
        producer.register_session(session_body(user_id="bob"))

    records = {m.record["session_id"]: m for m in published.read(topics.sessions)}
    expected = hmac.new(
        b"a key of the operator's", b"alice@example.com", hashlib.sha256
    ).hexdigest()
    assert records[raw["session_id"]].record["user_id"] == expected
    assert records[again["session_id"]].record["user_id"] == expected, "the same user, grouped"
    assert records[anonymous["session_id"]].record["user_id"] is None
    assert all(b"alice" not in message.raw for message in records.values())
    assert b"bob" in next(m.raw for m in records.values() if m.record["user_id"] == "bob")

"""What the gateway publishes for accepted requests, read back from the topics."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from producers.grouping import GroupingPublisher, partition_of
from producers.ingest import MAX_EVENTS_MESSAGE_BYTES, IngestMessages
from producers.models import EventsIn, SessionIn
from producers.publisher import KafkaPublisher
from schemas import AvroCodec, from_json_text
from tests.utils.payloads import event_body, events_body, new_id, session_body

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from clickstream.settings import Settings
    from schemas import Topics
    from tests.utils.kafka import TopicReader

SESSION_URL = "/api/v1/clickstream/session"
EVENTS_URL = "/api/v1/clickstream/session/events"


def test_seed_session_is_published_with_every_field(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    body = session_body()

    response = gateway.post(SESSION_URL, json=body)

    assert response.status_code == 200
    assert response.json() == {"session_id": body["session_id"], "created_at": body["created_at"]}
    [message] = published.read(topics.sessions)
    assert message.key == body["session_id"].encode()
    assert message.name == "clickstream.SessionRegistered"
    record = message.record
    assert record["session_id"] == body["session_id"]
    assert record["search_query"] == "user search query"
    assert record["user_id"] == body["user_id"]
    assert record["created_at"] == body["created_at"]
    assert from_json_text(record["search_meta"]) == {}
    first, second, third = record["search_results"]
    assert first["object_id"] == body["search_results"][0]["object_id"]
    assert first["rank"] == 0.3
    assert from_json_text(first["meta"]) == {}, "item_info is another name for meta"
    assert second == {
        "object_id": body["search_results"][1]["object_id"],
        "rank": None,
        "meta": None,
    }
    assert third["object_id"] == body["search_results"][2]["object_id"]
    assert abs(record["received_at_ms"] / 1000 - time.time()) < 60


def test_optional_session_fields_default(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    session_id = new_id()
    before = int(time.time())

    response = gateway.post(
        SESSION_URL,
        json={"session_id": session_id, "search_query": "q", "search_results": [], "extra": 1},
    )

    after = int(time.time())
    assert response.status_code == 200
    [message] = published.read(topics.sessions)
    record = message.record
    assert before <= record["created_at"] <= after, "created_at defaults to the server's time"
    assert response.json()["created_at"] == record["created_at"]
    assert record["user_id"] is None
    assert record["search_meta"] is None
    assert (record["payload_filter"], record["sort_by"]) == (None, None)
    assert record["search_results"] == []
    assert "extra" not in record


# What the original service v1.0.0 takes: the filter and the order that decided what was shown.
PAYLOAD_FILTER = {
    "query": {
        "bool": {
            "must": [{"term": {"field": "brand", "value": "acme"}}],
            "must_not": [{"range": {"field": "price", "gte": 10**20}}],
        }
    }
}


def test_payload_filter_and_sort_by_are_published_as_sent(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    ordered = session_body(
        payload_filter=PAYLOAD_FILTER, sort_by={"field": "price", "order": "desc"}
    )
    forced = session_body(sort_by={"field": "_score", "force_not_payload": True})

    for body in (ordered, forced):
        response = gateway.post(SESSION_URL, json=body)
        assert response.status_code == 200, response.text

    records = {m.record["session_id"]: m.record for m in published.read(topics.sessions)}
    first, second = records[ordered["session_id"]], records[forced["session_id"]]
    assert from_json_text(first["payload_filter"]) == PAYLOAD_FILTER  # 10**20 kept exactly
    assert first["sort_by"] == {"field": "price", "order": "desc", "force_not_payload": False}
    assert second["payload_filter"] is None
    assert second["sort_by"] == {"field": "_score", "order": "asc", "force_not_payload": True}


def test_a_payload_filter_or_sort_by_the_original_refuses_is_refused(gateway: TestClient) -> None:
    refusals = {
        "payload_filter": {"term": {"field": "brand", "value": "acme"}},  # no query
        "sort_by": {"field": "price", "order": "up"},
    }
    for name, value in refusals.items():
        response = gateway.post(SESSION_URL, json=session_body(**{name: value}))

        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["body", name]
    missing_field = gateway.post(SESSION_URL, json=session_body(sort_by={"order": "asc"}))
    assert missing_field.status_code == 422
    assert missing_field.json()["detail"][0]["loc"] == ["body", "sort_by", "field"]


def test_seed_events_are_published_one_message_each_on_the_session_partition(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    session = session_body()
    gateway.post(SESSION_URL, json=session)
    now = int(time.time())
    body = {
        "session_id": session["session_id"],
        "events": [
            event_body(item_info={"position": 1}, event_type="click", created_at=now - 10),
            event_body(item_info={}, created_at=now - 9),
            event_body(),
        ],
    }

    response = gateway.post(EVENTS_URL, json=body)

    assert response.status_code == 200
    assert response.json() == {"session_id": session["session_id"], "accepted": 3}
    [registered] = published.read(topics.sessions)
    [message] = published.read(topics.events)
    assert message.name == "clickstream.SessionEvents", "a request's events in one message"
    assert message.key == session["session_id"].encode()
    assert message.partition == registered.partition, "a session and its events share a partition"
    assert message.record["session_id"] == session["session_id"]
    events = message.record["events"]
    assert [e["event_id"] for e in events] == [e["event_id"] for e in body["events"]]
    for item, sent in zip(events, body["events"], strict=True):
        assert item["object_id"] == sent["object_id"]
        assert item["event_type"] == "click"
    first, second, third = events
    assert from_json_text(first["meta"]) == {"position": 1}
    assert (first["created_at"], second["created_at"]) == (now - 10, now - 9)
    assert third["meta"] is None
    assert abs(third["created_at"] - time.time()) < 60, "created_at defaults to the server's time"


def test_event_type_and_meta_win_over_defaults_and_alias(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    body = events_body(new_id(), count=0)
    body["events"] = [
        event_body(
            event_type="add_to_cart", meta={"from": "meta"}, item_info={"from": "item_info"}
        ),
        event_body(event_type=None),
    ]

    assert gateway.post(EVENTS_URL, json=body).status_code == 200

    first, second = (event for _, event in published.read_events(topics.events))
    assert first["event_type"] == "add_to_cart"
    assert from_json_text(first["meta"]) == {"from": "meta"}
    assert second["event_type"] == "click"


def test_free_form_objects_pass_through_losslessly(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    meta = {
        "nested": {"deeper": {"list": [1, [2, 3], {"x": None}], "empty": {}}},
        "unicode": 'поиск 検索 🔍 \u0000 "quoted" \\ /',
        "null": None,
        "big": 2**80 + 1,
        "negative_big": -(2**70),
        "int64_max": 2**63 - 1,
        "floats": [0.1, 1e-300, 1.7976931348623157e308, -0.0, 5e-324, 123456789.123456789],
        "bools": [True, False],
    }
    session = session_body(search_meta=meta, search_results=[{"object_id": "o", "meta": meta}])
    events = events_body(session["session_id"], count=1)
    events["events"][0]["meta"] = meta

    assert gateway.post(SESSION_URL, json=session).status_code == 200
    assert gateway.post(EVENTS_URL, json=events).status_code == 200

    [registered] = published.read(topics.sessions)
    [(_, event)] = published.read_events(topics.events)
    for text in (
        registered.record["search_meta"],
        registered.record["search_results"][0]["meta"],
        event["meta"],
    ):
        decoded = from_json_text(text)
        assert decoded == meta
        assert type(decoded["big"]) is int
        assert math.copysign(1.0, decoded["floats"][3]) == -1.0, "-0.0 keeps its sign"
        assert decoded["floats"][5] == 123456789.123456789


def test_empty_event_list_publishes_nothing(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    response = gateway.post(EVENTS_URL, json={"session_id": new_id(), "events": []})

    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert published.count(topics.events) == 0


def test_health_ready_and_openapi(gateway: TestClient) -> None:
    assert gateway.get("/health").json() == {"status": "ok"}
    assert gateway.get("/ready").json() == {"status": "ready"}
    document = gateway.get("/openapi.json").json()
    session_op = document["paths"][SESSION_URL]["post"]
    assert session_op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionIn"
    }
    schemas = document["components"]["schemas"]
    assert schemas["SessionIn"]["examples"][0]["session_id"] == "c327c30bd3db459093e5f5d254bdd144"
    assert len(schemas["EventsIn"]["examples"][0]["events"]) == 3
    assert EVENTS_URL in document["paths"]


def test_a_request_of_large_events_is_split_into_messages_in_order(
    gateway: TestClient, topics: Topics, published: TopicReader
) -> None:
    body = events_body(new_id(), count=20)
    for event in body["events"]:
        event["meta"] = {"blob": "x" * 40_000}  # 800 KB in all, under the body limit

    response = gateway.post(EVENTS_URL, json=body)

    assert response.status_code == 200, response.text
    messages = published.read(topics.events)
    assert len(messages) > 1
    assert all(len(m.raw) < MAX_EVENTS_MESSAGE_BYTES + 64 * 1024 for m in messages)
    assert len({m.partition for m in messages}) == 1
    sent = [e["event_id"] for e in body["events"]]
    assert [event["event_id"] for _, event in published.read_events(topics.events)] == sent


def test_concurrent_requests_of_a_partition_go_as_one_message_each_in_its_partition(
    settings: Settings, topics: Topics, published: TopicReader
) -> None:
    """Requests accepted together are grouped by partition (one SessionRegisteredBatch or
    SessionEventsBatch each), every record in the partition its session id gives, none
    lost or doubled; a request alone stays a keyed message of its own."""
    codec = AvroCodec()
    messages = IngestMessages(codec, topics)
    sessions = [SessionIn.model_validate(session_body()) for _ in range(40)]
    clicks = [
        EventsIn.model_validate({"session_id": s.session_id, "events": [event_body()]})
        for s in sessions
    ]

    async def publish_together() -> None:
        publisher = KafkaPublisher(settings.kafka_producer_config(), 10)
        grouping = GroupingPublisher(publisher, codec, topics, settings.topic_partitions)
        try:
            await asyncio.gather(
                *(grouping.session(messages.session_record(s), 500) for s in sessions),
                *(grouping.events(messages.events_records(c)) for c in clicks),
            )
            await grouping.session(messages.session_record(sessions[0]), 500)  # alone
        finally:
            publisher.close()

    asyncio.run(publish_together())

    registrations = published.read_registrations(topics.sessions)
    events = published.read_events(topics.events)
    kinds = {message.name for message, _ in registrations + events}
    assert {"clickstream.SessionRegisteredBatch", "clickstream.SessionEventsBatch"} <= kinds
    assert sorted(r["session_id"] for _, r in registrations) == sorted(
        [s.session_id for s in sessions] + [sessions[0].session_id]
    )
    assert sorted(e["event_id"] for _, e in events) == sorted(c.events[0].event_id for c in clicks)
    for message, record in registrations + events:
        assert message.partition == partition_of(record["session_id"], settings.topic_partitions)
    assert any(m.name == "clickstream.SessionRegistered" for m, _ in registrations)

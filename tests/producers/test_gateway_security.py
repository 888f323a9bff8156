"""Who may call what: bearer tokens on the internal endpoints, optional ingest keys, CORS
for browser front-ends on the public endpoints only. Against the real broker and mongod."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from producers.gateway import create_app
from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import events_body, new_id, session_body
from tests.utils.pipeline import (
    BATCH_SESSIONS_URL,
    BATCH_URL,
    EVENTS_URL,
    IRRELEVANT_URL,
    RELEASE_URL,
    SESSION_URL,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from httpx import Response

    from clickstream.settings import Settings
    from schemas import AvroCodec

OLD_TOKEN, NEW_TOKEN = "old-token-0123456789", "new-token-9876543210"
UNKNOWN_BATCH = "0123456789abcdef01234567"


@pytest.fixture
def rotating(settings_factory: Callable[..., Settings]) -> Iterator[tuple[Settings, TestClient]]:
    """A gateway in the middle of a rotation: the new token added, the old one still valid.
    Releases give up after a second: no worker runs here."""
    settings = settings_factory(
        internal_tokens=[NEW_TOKEN, OLD_TOKEN], release_wait_seconds=1, publish_timeout_seconds=1
    )
    with TestClient(create_app(settings)) as client:
        yield settings, client


def _internal_calls(client: TestClient, headers: dict[str, str]) -> list[Response]:
    return [
        client.post(RELEASE_URL, json={"release_id": new_id()}, headers=headers),
        client.get(BATCH_URL, params={"batch_id": UNKNOWN_BATCH}, headers=headers),
        client.get(BATCH_SESSIONS_URL, params={"batch_id": UNKNOWN_BATCH}, headers=headers),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {NEW_TOKEN}"},
        {"Authorization": f"Bearer {NEW_TOKEN}x"},
        {"X-Clickstream-Key": NEW_TOKEN},
    ],
    ids=["none", "wrong", "not-bearer", "longer", "other-header"],
)
def test_internal_endpoints_refuse_a_missing_or_wrong_token_and_publish_nothing(
    rotating: tuple[Settings, TestClient], codec: AvroCodec, headers: dict[str, str]
) -> None:
    settings, client = rotating

    answers = _internal_calls(client, headers)

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers)
    assert all("batch_id" not in a.json() for a in answers)
    releases = Topics(settings.topic_prefix).releases
    assert TopicReader(settings.kafka_common_config(), codec).count(releases) == 0


@pytest.mark.parametrize("token", [NEW_TOKEN, OLD_TOKEN], ids=["right", "rotated-out"])
def test_internal_endpoints_take_every_configured_token(
    rotating: tuple[Settings, TestClient], codec: AvroCodec, token: str
) -> None:
    settings, client = rotating

    release, batch, sessions = _internal_calls(client, {"Authorization": f"Bearer {token}"})

    # Past the token: the request is published; no coordinator runs here to answer it.
    assert release.status_code == 503, release.text
    assert (batch.status_code, sessions.status_code) == (404, 404)
    published = TopicReader(settings.kafka_common_config(), codec).read(
        Topics(settings.topic_prefix).releases
    )
    assert [m.name for m in published] == ["clickstream.ReleaseRequested"]


def test_without_configured_tokens_the_internal_endpoints_refuse_everything(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory(internal_tokens=[])
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        answers = _internal_calls(client, {"Authorization": "Bearer anything"})

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert "no internal token is configured" in answers[0].json()["detail"]
    assert any("internal endpoints refuse every call" in r.getMessage() for r in caplog.records)


def test_tokens_never_appear_in_the_logs(
    rotating: tuple[Settings, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    settings, client = rotating
    with caplog.at_level(logging.DEBUG):
        _internal_calls(client, {"Authorization": f"Bearer {OLD_TOKEN}"})
        _internal_calls(client, {"Authorization": "Bearer wrong-one"})

    assert caplog.records
    assert not [r for r in caplog.records if OLD_TOKEN in r.getMessage()]
    assert not [r for r in caplog.records if NEW_TOKEN in r.getMessage()]


def test_the_openapi_document_declares_the_bearer_scheme_on_internal_endpoints_only(
    gateway: TestClient,
) -> None:
    document = gateway.get("/openapi.json").json()

    schemes = document["components"]["securitySchemes"]
    assert schemes == {"internalToken": {**schemes["internalToken"], "type": "http"}}
    assert schemes["internalToken"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            expected = [{"internalToken": []}] if "/internal/" in path else None
            assert operation.get("security") == expected, path
            if expected:
                assert "401" in operation["responses"], path


def test_ingest_keys_when_set_are_required_on_the_ingest_endpoints(
    settings_factory: Callable[..., Settings], codec: AvroCodec
) -> None:
    settings = settings_factory(ingest_keys=["front-end-key", "mobile-key"])
    session = session_body()
    with TestClient(create_app(settings)) as client:
        refused = [
            client.post(SESSION_URL, json=session),
            client.post(SESSION_URL, json=session, headers={"X-Clickstream-Key": "nope"}),
            client.post(EVENTS_URL, json=events_body(session["session_id"])),
            client.post(IRRELEVANT_URL, json={"session_id": session["session_id"]}),
        ]
        accepted = [
            client.post(SESSION_URL, json=session, headers={"X-Clickstream-Key": "mobile-key"}),
            client.post(
                EVENTS_URL,
                json=events_body(session["session_id"], count=2),
                headers={"X-Clickstream-Key": "front-end-key"},
            ),
        ]
        document = client.get("/openapi.json").json()

    assert [r.status_code for r in refused] == [401, 401, 401, 401]
    assert all("X-Clickstream-Key" in r.json()["detail"] for r in refused)
    assert [r.status_code for r in accepted] == [200, 200]
    reader = TopicReader(settings.kafka_common_config(), codec)
    topics = Topics(settings.topic_prefix)
    assert [m.record["session_id"] for m in reader.read(topics.sessions)] == [session["session_id"]]
    assert len(reader.read_events(topics.events)) == 2, "only the accepted request's events"
    assert document["paths"]["/api/v1/clickstream/session"]["post"]["security"] == [
        {"ingestKey": []}
    ]


def test_without_ingest_keys_the_ingest_endpoints_stay_open(gateway: TestClient) -> None:
    session = session_body()

    answer = gateway.post(SESSION_URL, json=session)

    assert answer.status_code == 200
    assert "ingestKey" not in gateway.get("/openapi.json").json()["components"].get(
        "securitySchemes", {}
    )


@pytest.fixture
def cors_gateway(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = settings_factory(cors_origins=["https://shop.example"])
    with TestClient(create_app(settings)) as client:
        yield client


def _preflight(client: TestClient, url: str, origin: str, headers: str) -> Response:
    return client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def test_cors_preflight_from_an_allowed_origin_is_answered(cors_gateway: TestClient) -> None:
    preflight = _preflight(
        cors_gateway, EVENTS_URL, "https://shop.example", "content-type,x-clickstream-key"
    )
    session = session_body()
    posted = cors_gateway.post(
        SESSION_URL, json=session, headers={"Origin": "https://shop.example"}
    )

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-clickstream-key" in preflight.headers["access-control-allow-headers"].lower()
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == "https://shop.example"


def test_cors_refuses_other_origins_and_never_opens_the_internal_endpoints(
    cors_gateway: TestClient,
) -> None:
    other = _preflight(cors_gateway, SESSION_URL, "https://evil.example", "content-type")
    internal = _preflight(cors_gateway, RELEASE_URL, "https://shop.example", "authorization")
    internal_get = cors_gateway.get(
        BATCH_URL, params={"batch_id": UNKNOWN_BATCH}, headers={"Origin": "https://shop.example"}
    )

    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert internal.status_code == 405
    assert "access-control-allow-origin" not in internal.headers
    assert "access-control-allow-origin" not in internal_get.headers


def test_without_cors_origins_no_cross_origin_call_is_allowed(gateway: TestClient) -> None:
    preflight = _preflight(gateway, SESSION_URL, "https://shop.example", "content-type")

    assert "access-control-allow-origin" not in preflight.headers

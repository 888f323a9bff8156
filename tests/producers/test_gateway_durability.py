"""A 2xx means Kafka acknowledged; when it cannot, the gateway answers 503 in bounded time."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from producers.gateway import create_app
from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import events_body, session_body
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from schemas import AvroCodec
    from tests.servers import Broker

TIMEOUT = 2.0


def test_broker_down_gives_503_then_a_retry_is_accepted(
    own_broker: Broker, tmp_path: Path, codec: AvroCodec
) -> None:
    settings = Settings(
        kafka_bootstrap=own_broker.bootstrap,
        publish_timeout_seconds=TIMEOUT,
        retry_after_seconds=3,
        data_dir=tmp_path,
    )
    ensure_topics(settings)
    topics = Topics(settings.topic_prefix)
    session = session_body()
    events = events_body(session["session_id"], count=5)
    with TestClient(create_app(settings)) as gateway:
        assert gateway.post("/api/v1/clickstream/session", json=session).status_code == 200

        own_broker.stop()
        started = time.monotonic()
        refused = gateway.post("/api/v1/clickstream/session/events", json=events)
        waited = time.monotonic() - started

        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "3"
        assert "retry" in refused.json()["detail"]
        assert waited < TIMEOUT + 10, "the gateway answers within its publish timeout"
        assert gateway.get("/ready").status_code == 503

        own_broker.start()
        retried = gateway.post("/api/v1/clickstream/session/events", json=events)

        assert retried.status_code == 200
        assert retried.json()["accepted"] == 5
        assert gateway.get("/ready").status_code == 200

    reader = TopicReader(settings.kafka_common_config(), codec)
    [registered] = reader.read(topics.sessions)
    assert registered.record["session_id"] == session["session_id"]
    published_ids = [event["event_id"] for _, event in reader.read_events(topics.events)]
    assert set(published_ids) == {e["event_id"] for e in events["events"]}


def test_readiness_outlasts_a_blip_but_not_a_broker_that_stays_away(
    own_broker: Broker, tmp_path: Path
) -> None:
    # Without a publish, only the metadata check sees the broker go: /ready stays 200 for
    # the grace, then turns 503 until the broker is back.
    grace = 3.0
    settings = Settings(
        kafka_bootstrap=own_broker.bootstrap, ready_grace_seconds=grace, data_dir=tmp_path
    )
    ensure_topics(settings)
    with TestClient(create_app(settings)) as gateway:
        assert gateway.get("/ready").status_code == 200

        own_broker.stop()
        stopped = time.monotonic()
        first = gateway.get("/ready")
        answers = [first]
        while answers[-1].status_code == 200 and time.monotonic() - stopped < 60:
            answers.append(gateway.get("/ready"))
        turned_after = time.monotonic() - stopped

        assert first.status_code == 200, "a failed check within the grace is not a failure"
        assert answers[-1].status_code == 503
        assert "failing for" in answers[-1].json()["detail"]
        assert turned_after >= grace

        own_broker.start()
        eventually(lambda: gateway.get("/ready").status_code == 200, timeout=60)

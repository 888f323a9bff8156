"""The gateway survives its broker: an idempotent producer that hits a fatal error
(OUT_OF_ORDER_SEQUENCE_NUMBER, when a restarted broker lost the tail of what it acknowledged)
is replaced, requests never hang, and once it is back every 2xx is on the topic."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from producers.gateway import create_app
from schemas import Topics
from tests.servers import USE_DOCKER, LocalBroker
from tests.utils.kafka import TopicReader
from tests.utils.payloads import events_body, session_body
from tests.utils.pipeline import EVENTS_URL, SESSION_URL, eventually

if TYPE_CHECKING:
    from pathlib import Path

    from schemas import AvroCodec

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="needs the local broker's unsaved stop")

CLIENTS = 4
# A bare SIGTERM of the local broker under load loses what it acknowledged in its last
# moments: the producer's next sequence numbers are then out of order, a fatal error.
MAX_RESTARTS = 10
TIMEOUT = 2.0


def test_a_fatal_producer_error_is_survived(
    own_broker: LocalBroker, tmp_path: Path, codec: AvroCodec
) -> None:
    settings = Settings(
        kafka_bootstrap=own_broker.bootstrap,
        publish_timeout_seconds=TIMEOUT,
        data_dir=tmp_path,
    )
    ensure_topics(settings)
    topics = Topics(settings.topic_prefix)
    accepted: set[str] = set()
    # Events answered 200 to a request sent once the broker was back for good.
    accepted_after: set[str] = set()
    back = threading.Event()
    answers: dict[int, int] = {}
    slowest = 0.0
    stop = threading.Event()
    lock = threading.Lock()

    with TestClient(create_app(settings)) as gateway:
        publisher = gateway.app.state.gateway.publisher  # type: ignore[attr-defined]
        session = session_body()
        assert gateway.post(SESSION_URL, json=session).status_code == 200

        def post_events() -> None:
            nonlocal slowest
            while not stop.is_set():
                body = events_body(session["session_id"], count=10)
                sent_after = back.is_set()
                started = time.monotonic()
                response = gateway.post(EVENTS_URL, json=body)
                waited = time.monotonic() - started
                with lock:
                    slowest = max(slowest, waited)
                    answers[response.status_code] = answers.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        accepted.update(e["event_id"] for e in body["events"])
                        if sent_after:
                            accepted_after.update(e["event_id"] for e in body["events"])
                if response.status_code != 200:
                    assert response.status_code == 503, response.text
                    assert response.headers["Retry-After"]
                    time.sleep(0.05)

        clients = [threading.Thread(target=post_events) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            restarts = 0
            while publisher.generation == 1 and restarts < MAX_RESTARTS:
                served = len(accepted)
                eventually(lambda: len(accepted) > served + 200, timeout=60)  # noqa: B023
                own_broker.terminate_unsaved()
                own_broker.start()
                restarts += 1
            assert publisher.generation > 1, f"no fatal error in {restarts} restarts"

            back.set()
            eventually(lambda: gateway.get("/ready").status_code == 200, timeout=60)
            eventually(lambda: len(accepted_after) > 200, timeout=60)
        finally:
            stop.set()
            for client in clients:
                client.join()

    assert answers.get(200, 0) > 0
    assert slowest < TIMEOUT + 10, "no request hangs"
    reader = TopicReader(settings.kafka_common_config(), codec)
    published = {event["event_id"] for _, event in reader.read_events(topics.events)}
    lost = accepted_after - published
    assert not lost, f"{len(lost)} events answered 200 after the restart are not on the topic"

"""/metrics shows, after a known load, exactly the counts that load must give."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clickstream.settings import Settings
from deploy.local.servers import LocalGateway, free_port
from producers.gateway import create_app
from tests.utils.payloads import events_body, session_body

if TYPE_CHECKING:
    from pathlib import Path

SESSION = "/api/v1/clickstream/session"
EVENTS = "/api/v1/clickstream/session/events"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_requests_and_publishes_are_counted_by_route_and_status(settings: Settings) -> None:
    with TestClient(create_app(settings)) as gateway:
        for _ in range(4):
            assert gateway.post(SESSION, json=session_body()).status_code == 200
        for _ in range(2):
            body = events_body(session_body()["session_id"], count=3)
            assert gateway.post(EVENTS, json=body).status_code == 200
        assert gateway.post(SESSION, json={"session_id": "s"}).status_code == 422
        malformed = gateway.post(
            SESSION, content=b"{", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert gateway.get("/no/such/path").status_code == 404

        response = gateway.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    requests = "clickstream_gateway_requests_total"
    assert value(found, requests, method="POST", route=SESSION, status="200") == 4
    assert value(found, requests, method="POST", route=EVENTS, status="200") == 2
    assert value(found, requests, method="POST", route=SESSION, status="422") == 1
    assert value(found, requests, method="POST", route=SESSION, status="400") == 1
    assert value(found, requests, method="GET", route="unmatched", status="404") == 1
    duration = "clickstream_gateway_request_duration_seconds_count"
    assert value(found, duration, method="POST", route=SESSION) == 6
    assert value(found, duration, method="POST", route=EVENTS) == 2
    # Refused requests publish nothing: six publishes, all acknowledged.
    publish = "clickstream_gateway_publish_duration_seconds_count"
    assert value(found, publish, outcome="acknowledged") == 6
    assert value(found, publish, outcome="unavailable") == 0
    assert (
        value(found, "clickstream_gateway_publish_duration_seconds_sum", outcome="acknowledged") > 0
    )


def test_unacknowledged_publishes_are_counted_as_503s(tmp_path: Path) -> None:
    # A port nothing listens on: Kafka is unreachable, for real.
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", publish_timeout_seconds=1, data_dir=tmp_path
    )
    with TestClient(create_app(settings)) as gateway:
        for _ in range(2):
            assert gateway.post(SESSION, json=session_body()).status_code == 503
        found = samples(gateway.get("/metrics").text)

    assert (
        value(
            found, "clickstream_gateway_requests_total", method="POST", route=SESSION, status="503"
        )
        == 2
    )
    publish = "clickstream_gateway_publish_duration_seconds_count"
    assert value(found, publish, outcome="unavailable") == 2
    assert value(found, publish, outcome="acknowledged") == 0


def test_several_processes_answer_their_sum_in_multiprocess_mode(
    settings: Settings, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    env = {
        **inherited,
        **settings.environment(),
        "CLICKSTREAM_HTTP_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    gateway = LocalGateway(tmp_path / "gateway", env=env).start()
    try:
        sent = 20
        for _ in range(sent):
            # A connection per request, so the kernel spreads them over both processes.
            with httpx.Client(base_url=gateway.address, timeout=30) as client:
                assert client.post(SESSION, json=session_body()).status_code == 200
        with httpx.Client(base_url=gateway.address, timeout=30) as client:
            found = samples(client.get("/metrics").text)
    finally:
        gateway.stop()

    requests = "clickstream_gateway_requests_total"
    assert value(found, requests, method="POST", route=SESSION, status="200") == sent
    publish = "clickstream_gateway_publish_duration_seconds_count"
    assert value(found, publish, outcome="acknowledged") == sent
    # Each process built its app (and its metric files); the scrape summed them.
    assert len(list(metrics_dir.glob("histogram_*.db"))) == 2

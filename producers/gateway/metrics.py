"""Prometheus metrics of the gateway, served on ``GET /metrics``.

- ``clickstream_gateway_requests_total{method,route,status}``: answered requests; ``route``
  is the route's path template (``unmatched`` for unknown paths, so a scan cannot blow up the
  series count).
- ``clickstream_gateway_request_duration_seconds{method,route}``: time to answer.
- ``clickstream_gateway_publish_duration_seconds{outcome}``: from handing a request's
  messages to the producer until Kafka acknowledged them all (``acknowledged``) or did not
  in time (``unavailable``).

503 answers (Kafka or no stream worker unavailable) are the requests of ``status="503"``;
those where Kafka did not acknowledge are also ``publish_duration_seconds_count{outcome=
"unavailable"}``.

Several uvicorn processes (``CLICKSTREAM_HTTP_WORKERS`` > 1) each count their own requests.
To have ``/metrics`` answer the sum over all of them, start the gateway with
``PROMETHEUS_MULTIPROC_DIR`` naming an empty directory (prometheus-client's multiprocess
mode; the container image sets it). Without it, each scrape sees one process only.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from producers.publisher import KafkaPublisher

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from clickstream.settings import KafkaConfig
    from producers.publisher import OutgoingMessage

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Requests are answered in milliseconds, publishes wait up to the publish timeout (5 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own (one per app, so that apps built
    in one process, as tests do, count apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clickstream_gateway_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "clickstream_gateway_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_duration = Histogram(
            "clickstream_gateway_publish_duration_seconds",
            "Time until Kafka acknowledged a request's messages, or gave up",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        for outcome in ("acknowledged", "unavailable"):
            self.publish_duration.labels(outcome)

    def instrument(self, app: FastAPI) -> None:
        """Count the app's requests and serve ``GET /metrics``. Call it after every other
        middleware is added, so that it counts what they answer too (413s, CORS)."""
        app.state.metrics = self
        app.add_middleware(RequestMetrics, metrics=self)
        app.include_router(router)

    def exposition(self) -> bytes:
        """The text format, summed over every process in multiprocess mode."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MeteredPublisher(KafkaPublisher):
    """The gateway's publisher, timing each request's publish."""

    def __init__(self, config: KafkaConfig, timeout: float, metrics: GatewayMetrics):
        super().__init__(config, timeout)
        self._metrics = metrics

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        start = time.perf_counter()
        outcome = "unavailable"
        try:
            await super().publish(messages)
            outcome = "acknowledged"
        finally:
            self._metrics.publish_duration.labels(outcome).observe(time.perf_counter() - start)


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # FastAPI puts the matched route into the scope while routing.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_duration.labels(method, route).observe(time.perf_counter() - start)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    gateway_metrics: GatewayMetrics = request.app.state.metrics
    return Response(gateway_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

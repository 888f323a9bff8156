"""The worker's web server: sessions as the state holds them (any worker answers, asking the
owner of the session's partition when it is another), readiness, metrics.

It runs in a thread of its own (uvicorn), reading the committed state under the worker's
lock; the processing never waits on it for longer than a read.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stream_app import metrics
from stream_app.source import web_url_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry
    from starlette.requests import Request

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

SESSION_PATH = "/sessions/"
READY_PATH = "/ready/"
PARTITIONS_PATH = "/partitions/"
DEFAULT_EVENTS_LIMIT = 100
# A request forwarded to the owner carries this, so it is never forwarded again.
_FORWARDED = "x-clickstream-forwarded"
_OWNERS_REFRESH_SECONDS = 1.0


def partition_of(session_id: str, partitions: int) -> int:
    """The partition the producers' partitioner (Java's murmur2) gives a session."""
    return int(murmur2(session_id.encode()) & 0x7FFFFFFF) % partitions


class Owners:
    """Which worker holds which partition, from the consumer group's description (each
    worker's client id names its web address)."""

    def __init__(self, settings: Settings, group: str, sessions_topic: str) -> None:
        self._admin = AdminClient(settings.kafka_common_config())
        self._group = group
        self._topic = sessions_topic
        self._owners: dict[int, str] = {}
        self._read_at = 0.0
        self._lock = threading.Lock()

    def owner(self, partition: int, refresh: bool = False) -> str | None:
        with self._lock:
            stale = time.monotonic() - self._read_at > _OWNERS_REFRESH_SECONDS
            if partition not in self._owners or (refresh and stale):
                self._read()
            return self._owners.get(partition)

    def _read(self) -> None:
        self._read_at = time.monotonic()
        try:
            described = self._admin.describe_consumer_groups([self._group])[self._group].result(5)
        except KafkaException as exc:
            logger.warning("consumer group not described error=%s", exc)
            return
        owners = {}
        for member in described.members:
            url = web_url_of(member.client_id or "")
            if url is None or member.assignment is None:
                continue
            for tp in member.assignment.topic_partitions:
                if tp.topic == self._topic:
                    owners[tp.partition] = url
        self._owners = owners


class WorkerWeb:
    """The worker's web server.

    Args:
        settings: host, port, partition count, request timeout.
        read_session: the session as this worker holds it: None if not registered, or
            ``NOT_MINE`` if its partition is not this worker's.
        ready: whether the worker holds its partitions with their state restored.
        partitions: the partitions this worker holds.
        owners: who holds the others.
        registry: the metrics.
    """

    NOT_MINE = object()

    def __init__(
        self,
        settings: Settings,
        read_session: Callable[[str, int, int], Any],
        ready: Callable[[], bool],
        partitions: Callable[[], list[int]],
        owners: Owners,
        registry: CollectorRegistry,
    ) -> None:
        self._settings = settings
        self._read = read_session
        self._ready = ready
        self._partitions = partitions
        self._owners = owners
        self._registry = registry
        self._client = httpx.Client(timeout=settings.worker_request_timeout_seconds)
        app = Starlette(
            routes=[
                Route(SESSION_PATH, self._session),
                Route(READY_PATH, self._ready_page),
                Route(PARTITIONS_PATH, self._partitions_page),
                Route(metrics.METRICS_PATH, self._metrics),
            ]
        )
        config = uvicorn.Config(
            app,
            host=settings.worker_web_host,
            port=settings.worker_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="worker-web", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"the worker's web server did not start on {self._settings.worker_web_host}:"
                    f"{self._settings.worker_port} (CLICKSTREAM_WORKER_WEB_PORT)"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(3)
        self._client.close()

    def _session(self, request: Request) -> Response:
        session_id = request.query_params.get("session_id")
        if not session_id:
            return JSONResponse({"detail": "session_id is required"}, status_code=422)
        try:
            events_limit = max(
                int(request.query_params.get("events_limit", DEFAULT_EVENTS_LIMIT)), 0
            )
        except ValueError:
            return JSONResponse({"detail": "events_limit must be an integer"}, status_code=422)
        partition = partition_of(session_id, self._settings.topic_partitions)
        found = self._read(session_id, partition, events_limit)
        if found is self.NOT_MINE:
            return self._forward(request, partition)
        if found is None:
            return JSONResponse(
                {"detail": f"session {session_id!r} is not registered"}, status_code=404
            )
        return JSONResponse(found)

    def _forward(self, request: Request, partition: int) -> Response:
        if request.headers.get(_FORWARDED):
            return JSONResponse({"detail": "partition moved; retry"}, status_code=503)
        for refresh in (False, True):
            owner = self._owners.owner(partition, refresh=refresh)
            if owner is None:
                continue
            try:
                answer = self._client.get(
                    f"{owner}{SESSION_PATH}",
                    params=dict(request.query_params),
                    headers={_FORWARDED: "1"},
                )
            except httpx.HTTPError as exc:
                logger.warning("session owner unreachable owner=%s error=%s", owner, exc)
                continue
            if answer.status_code != 503:
                return Response(
                    answer.content,
                    status_code=answer.status_code,
                    media_type="application/json",
                )
        return JSONResponse({"detail": "no worker holds the session's partition now"}, 503)

    def _ready_page(self, request: Request) -> Response:
        if self._ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "recovering"}, status_code=503)

    def _partitions_page(self, request: Request) -> Response:
        return JSONResponse({"partitions": self._partitions()})

    def _metrics(self, request: Request) -> Response:
        body, content_type = metrics.exposition(self._registry)
        return Response(body, headers={"Content-Type": content_type})

"""The whole pipeline under test: stream workers as processes of their own, and the
gateway in-process, on the test's real broker, mongod, topics and database."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.testclient import TestClient

from clickstream.credentials import internal_auth_headers
from deploy.local.servers import LocalWorker, free_port
from producers.gateway import create_app

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from httpx import Response

    from clickstream.settings import Settings

SESSION_URL = "/api/v1/clickstream/session"
EVENTS_URL = "/api/v1/clickstream/session/events"
IRRELEVANT_URL = "/api/v1/clickstream/session/irrelevant"
RELEASE_URL = "/api/v1/clickstream/internal/batch/release"
BATCH_URL = "/api/v1/clickstream/internal/batch"
BATCH_SESSIONS_URL = "/api/v1/clickstream/internal/batch/sessions"


class Worker:
    """A `clickstream worker` process with its own web port and data dir. A worker started
    with the id and port of one that crashed takes its place in the group at once, as a
    restarted worker would."""

    def __init__(
        self, settings: Settings, data_dir: Path, worker_id: str, port: int | None = None
    ) -> None:
        port = port or free_port()
        self.worker_id = worker_id
        self.port = port
        self.data_dir = data_dir
        env = {
            **settings.environment(),
            "CLICKSTREAM_WORKER_ID": worker_id,
            "CLICKSTREAM_WORKER_WEB_PORT": str(port),
            "CLICKSTREAM_DATA_DIR": str(data_dir),
            "CLICKSTREAM_LOG_LEVEL": "INFO",
        }
        self._process = LocalWorker(data_dir, port, env=env)
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = self._process.log_file

    def start(self) -> Worker:
        self._process.start(timeout=60)
        return self

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._process.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns a truthy value without raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"still {result!r} after {timeout} s")
        time.sleep(interval)


def wait_until_both_have_partitions(first: Worker, second: Worker, timeout: float = 60.0) -> None:
    """Until two workers each hold partitions, as their ``/partitions/`` pages show."""

    def shared() -> bool:
        held = [
            httpx.get(f"{w.url}/partitions/", timeout=5).json()["partitions"]
            for w in (first, second)
        ]
        return all(held) and not set(held[0]) & set(held[1])

    eventually(shared, timeout)


def leader_and_follower(first: Worker, second: Worker) -> tuple[Worker, Worker]:
    """Which of two workers runs the release coordinator (the group's leader), and the other.
    Pausing the follower holds every release at ``releasing``: its partitions cannot write
    their part, and the coordinator goes on."""

    def leader() -> Worker | None:
        return next((w for w in (first, second) if "release coordinator active" in w.log()), None)

    found: Worker = eventually(leader)
    return found, second if found is first else first


class Pipeline:
    """Helpers over the gateway, in the words of the API."""

    def __init__(self, settings: Settings, gateway: TestClient, workers: list[Worker]) -> None:
        self.settings = settings
        self.gateway = gateway
        self.workers = workers

    def register(self, body: dict[str, Any]) -> Response:
        response = self.gateway.post(SESSION_URL, json=body)
        assert response.status_code == 200, response.text
        return response

    def add_events(self, session_id: str, events: list[dict[str, Any]]) -> Response:
        body = {"session_id": session_id, "events": events}
        response = self.gateway.post(EVENTS_URL, json=body)
        assert response.status_code == 200, response.text
        return response

    def session(self, session_id: str, events_limit: int = 100) -> Response:
        return self.gateway.get(
            SESSION_URL, params={"session_id": session_id, "events_limit": events_limit}
        )

    def wait_session(
        self, session_id: str, events: int = 0, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The session once the stream shows it with ``events`` events."""

        def shown() -> dict[str, Any] | None:
            response = self.session(session_id, events_limit=10_000)
            if response.status_code == 200 and response.json()["event_count"] >= events:
                return response.json()  # type: ignore[no-any-return]
            return None

        return eventually(shown, timeout)  # type: ignore[no-any-return]

    def release(self, release_id: str, **fields: Any) -> Response:
        return self.gateway.post(RELEASE_URL, json={"release_id": release_id, **fields})

    def batch(self, batch_id: str) -> Response:
        return self.gateway.get(BATCH_URL, params={"batch_id": batch_id})

    def batch_sessions(self, batch_id: str, page_size: int = 100) -> list[dict[str, Any]]:
        """Every session of the batch, read page by page as a client would."""
        sessions: list[dict[str, Any]] = []
        after = 0
        while True:
            response = self.gateway.get(
                BATCH_SESSIONS_URL,
                params={
                    "batch_id": batch_id,
                    "after_number": after,
                    "limit": page_size,
                    "events_limit": 10_000,
                },
            )
            assert response.status_code == 200, response.text
            page = response.json()
            if not page["sessions"]:
                return sessions
            sessions.extend(page["sessions"])
            after = page["last_number"]


def gateway_client(settings: Settings, workers: list[Worker]) -> TestClient:
    """The gateway, in-process; its calls carry the internal token of the settings."""
    settings = settings.model_copy(update={"worker_urls": [w.url for w in workers]})
    return TestClient(create_app(settings), headers=internal_auth_headers(settings))

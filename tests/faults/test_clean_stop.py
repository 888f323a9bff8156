"""SIGTERM stops the gateway, a worker and `clickstream run` within 10 s, whether the broker
and mongod are up, stopped (SIGTERM) or paused (SIGSTOP), and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from deploy.local_servers import LocalGateway, free_port, is_running
from tests.servers import USE_DOCKER, LocalBroker, LocalDatabase
from tests.utils.pipeline import Worker, eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="pauses the local servers by pid")

STOP_BOUND_SECONDS = 10.0
CLI = Path(sys.executable).parent / "clickstream"


class Run:
    """`clickstream run` on the test's servers: it starts only its worker and the API."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.data_dir = data_dir
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        servers = settings.environment()
        env |= {
            "CLICKSTREAM_KAFKA_BOOTSTRAP": servers["CLICKSTREAM_KAFKA_BOOTSTRAP"],
            "CLICKSTREAM_MONGODB_URI": servers["CLICKSTREAM_MONGODB_URI"],
            "CLICKSTREAM_TOPIC_PREFIX": f"run-{uuid.uuid4().hex[:8]}.",
            "CLICKSTREAM_DATA_DIR": str(data_dir),
            "CLICKSTREAM_HTTP_PORT": str(port),
            "CLICKSTREAM_WORKER_WEB_PORT": str(free_port()),
        }
        self.log_file = data_dir / "run.log"
        data_dir.mkdir(parents=True)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [str(CLI), "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log_file.read_text()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
            return False

        eventually(ready, timeout=120, interval=0.3)

    def pids(self) -> list[int]:
        """Its own pid and its worker's."""
        return [self.process.pid, *(int(p.read_text()) for p in self.data_dir.glob("*.pid"))]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[LocalBroker, LocalDatabase]]:
    """A broker and a mongod of this test alone, since it stops or pauses them."""
    broker = LocalBroker(tmp_path / "kafka").start()
    database = LocalDatabase(tmp_path / "mongodb").start()
    try:
        yield broker, database
    finally:
        for server in (broker, database):
            pid = server._server.pid  # noqa: SLF001 - the test's own server process
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        broker.close()
        database.stop()


def _stop_time(pid: int, exited: callable) -> float:  # type: ignore[valid-type]
    """Seconds from SIGTERM until the process exited (bounded at 60 s)."""
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while not exited() and time.monotonic() - started < 60:
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("servers_state", ["up", "stopped", "paused"])
def test_sigterm_stops_every_process_in_bounded_time(
    servers: tuple[LocalBroker, LocalDatabase], servers_state: str, tmp_path: Path
) -> None:
    broker, database = servers
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        mongodb_uri=database.uri,
        topic_prefix=f"test-{uuid.uuid4().hex[:8]}.",
        data_dir=tmp_path / "data",
        tick_interval_seconds=0.5,
    )
    ensure_topics(settings)
    worker = Worker(settings, tmp_path / "worker", "worker-stop")
    gateway = LocalGateway(
        tmp_path / "gateway",
        env={**settings.environment(), "CLICKSTREAM_WORKER_URLS": worker.url},
    )
    run: Run | None = None
    try:
        worker.start()
        gateway.start()
        run = Run(settings, tmp_path / "run")
        run.wait_ready()
        pids = {"gateway": gateway.pid, "worker": worker.pid, **dict.fromkeys(["run"])}
        run_pids = run.pids()

        if servers_state == "stopped":
            broker.stop()
            database.stop()
        elif servers_state == "paused":
            for pid in (broker.pid, database._server.pid):  # noqa: SLF001
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
        # Long enough for the clients to notice (connections reset or timing out).
        time.sleep(3)

        times = {
            "gateway": _stop_time(gateway.pid, lambda: gateway.exit_code() is not None),  # type: ignore[arg-type]
            "worker": _stop_time(worker.pid, lambda: worker._process.exit_code() is not None),  # type: ignore[arg-type]  # noqa: SLF001
            "run": _stop_time(run.process.pid, lambda: run.process.poll() is not None),  # type: ignore[union-attr]
        }
        print(f"stop times servers={servers_state} {times}")  # noqa: T201 - the measured figures
        left = [
            pid for pid in [pids["gateway"], pids["worker"], *run_pids] if pid and is_running(pid)
        ]

        assert all(t < STOP_BOUND_SECONDS for t in times.values()), times
        assert not left, f"processes left after SIGTERM: {left}"
    finally:
        if run is not None and run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        gateway.stop()
        worker.stop()

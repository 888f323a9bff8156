"""SIGTERM stops the gateway, a worker and `clickstream run` within 10 s, whether the broker
and mongod are up, stopped (SIGTERM) or paused (SIGSTOP), and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from deploy.local.servers import LocalGateway, is_running
from tests.faults.runs import Run, internal_headers
from tests.servers import USE_DOCKER, LocalBroker, LocalDatabase
from tests.utils.pipeline import Worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from clickstream.settings import Settings

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="pauses the local servers by pid")

STOP_BOUND_SECONDS = 10.0


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
    servers: tuple[LocalBroker, LocalDatabase],
    servers_state: str,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    broker, database = servers
    settings = settings_factory(
        kafka_bootstrap=broker.bootstrap, mongodb_uri=database.uri, tick_interval_seconds=0.5
    )
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
        # Each reads MongoDB once, as a client looking up a batch: pymongo then has a session
        # to end on close, and would wait for a mongod that is gone or paused.
        unknown = {"batch_id": "0" * 24}
        for url in (gateway.address, run.url):
            looked_up = httpx.get(
                f"{url}/api/v1/clickstream/internal/batch",
                params=unknown,
                headers=internal_headers(settings),
            )
            assert looked_up.status_code == 404, looked_up.text
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

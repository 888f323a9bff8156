"""`clickstream run` restarts a crashed worker for as long as it runs, says so in one ERROR
line each time, and its `/ready` answers 503 while no worker is running."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import httpx
import pytest

from deploy.local.servers import is_running
from tests.faults.runs import Run
from tests.servers import USE_DOCKER
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from clickstream.settings import Settings

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="runs the project's own local servers")


def _ready(run: Run) -> int:
    return httpx.get(f"{run.url}/ready", timeout=10).status_code


def _lines(run: Run, text: str) -> list[str]:
    return [line for line in run.log_file.read_text().splitlines() if text in line]


def test_a_killed_worker_is_started_again_each_time(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    run = Run(settings_factory(), tmp_path / "run")
    try:
        run.wait_ready()
        worker_pid_file = tmp_path / "run" / "worker.pid"
        for crash in (1, 2):
            pid = int(worker_pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            eventually(lambda: _ready(run) == 503, timeout=30)  # noqa: B023
            # Started again and ready (its /ready/ may flap while its group rebalances).
            eventually(lambda: len(_lines(run, "worker started again")) == crash, timeout=120)  # noqa: B023
            eventually(lambda: _ready(run) == 200, timeout=120, interval=0.5)
            new_pid = int(worker_pid_file.read_text())
            assert new_pid != pid
            assert is_running(new_pid)
            crashes = [line for line in _lines(run, "worker crashed code=-9") if " ERROR " in line]
            assert len(crashes) == crash, crashes
            assert "worker.log" in crashes[-1]
    finally:
        run.process.send_signal(signal.SIGTERM)
        run.process.wait(timeout=60)
    assert run.process.returncode == 0

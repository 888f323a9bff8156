"""`clickstream run` (what `make run` calls): serves the seed's calls, release included, on
real local servers, stops everything it started on SIGTERM, and keeps what was accepted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from clickstream.settings import Settings
from deploy.local.servers import free_port, is_running
from tests.servers import USE_DOCKER
from tests.utils.payloads import events_body, session_body

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="runs the project's own local servers")

CLI = Path(sys.executable).parent / "clickstream"


class Run:
    """One `clickstream run` process with its own data dir and port."""

    def __init__(
        self, data_dir: Path, port: int, worker_port: int, extra_env: dict[str, str] | None = None
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        env |= {
            "CLICKSTREAM_DATA_DIR": str(data_dir),
            "CLICKSTREAM_HTTP_PORT": str(port),
            # beside a `make run`, whose worker has the default port
            "CLICKSTREAM_WORKER_WEB_PORT": str(worker_port),
            **(extra_env or {}),
        }
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(CLI), "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return json.loads((self.data_dir / "run.json").read_text())  # type: ignore[no-any-return]
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("clickstream run never became ready")

    def server_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.data_dir.glob("*.pid")]

    def terminate(self, signum: int = signal.SIGTERM) -> str:
        self.process.send_signal(signum)
        output, _ = self.process.communicate(timeout=60)
        return output


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / ".clickstream"


def test_run_serves_the_seed_calls_stops_everything_and_keeps_data(data_dir: Path) -> None:
    port, worker_port = free_port(), free_port()
    run = Run(data_dir, port, worker_port)
    try:
        servers = run.wait_ready()
        pids = run.server_pids()
        niceness = {pid: _nice(pid) for pid in pids}
        session = session_body()
        events = events_body(session["session_id"], count=3)

        token = (data_dir / "internal-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        registered = httpx.post(f"{run.url}/api/v1/clickstream/session", json=session)
        added = httpx.post(f"{run.url}/api/v1/clickstream/session/events", json=events)
        unauthorized = httpx.post(
            f"{run.url}/api/v1/clickstream/internal/batch/release",
            json={"release_id": "090bda77a5e048d59a1e310dc20fbd6d"},
        )
        released = httpx.post(
            f"{run.url}/api/v1/clickstream/internal/batch/release",
            json={"release_id": "090bda77a5e048d59a1e310dc20fbd6d"},
            headers=auth,
            timeout=60,
        )
        # The commands find what the run started, export included (no CLICKSTREAM_* set).
        exported = subprocess.run(
            [str(CLI), "batch", "export", released.json()["batch_id"], "--output", "-"],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")},
                "CLICKSTREAM_DATA_DIR": str(data_dir),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        output = run.terminate(signal.SIGINT)  # Ctrl-C

    assert registered.status_code == 200
    assert unauthorized.status_code == 401
    assert f"kept in {data_dir / 'internal-token'}): {token}" in output, "printed for the user"
    assert added.json() == {"session_id": session["session_id"], "accepted": 3}
    assert released.status_code == 200, released.text
    assert re.fullmatch("[0-9a-f]{24}", released.json()["batch_id"])
    assert (released.json()["session_count"], released.json()["event_count"]) == (1, 3)
    assert exported.returncode == 0, exported.stderr
    [row] = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["event_id"] for e in row["events"]] == [e["event_id"] for e in events["events"]]
    assert run.process.returncode == 0, output
    stopping = output[output.index("draining signal=SIGINT") :]
    assert not [line for line in stopping.splitlines() if "rdkafka" in line or " ERROR " in line], (
        "Ctrl-C leaves no error lines"
    )
    assert len(pids) == 3, "a broker, a mongod and a stream worker"
    # The worker yields the cores to the gateway and the servers it waits on.
    assert sorted(niceness.values()) == [0, 0, Settings().local_worker_nice], niceness
    assert not [pid for pid in pids if is_running(pid)], "no server outlives the run"
    assert not list(data_dir.glob("*.pid"))
    assert servers["http_url"] == run.url

    again = Run(data_dir, port, worker_port)
    try:
        again.wait_ready()
        # From the worker's tables on disk (the topics no longer hold what it handled).
        kept = httpx.get(
            f"{again.url}/api/v1/clickstream/session",
            params={"session_id": session["session_id"]},
            timeout=30,
        )
        batch = httpx.get(
            f"{again.url}/api/v1/clickstream/internal/batch",
            params={"batch_id": released.json()["batch_id"]},
            headers=auth,
        )
    finally:
        again.terminate()
    assert kept.status_code == 200, kept.text
    assert [e["event_id"] for e in kept.json()["events"]] == [
        e["event_id"] for e in events["events"]
    ]
    assert batch.json() == released.json(), "the batch outlives the run, and so does the token"


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])

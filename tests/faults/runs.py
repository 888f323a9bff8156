"""`clickstream run` as a process of its own, on servers the test owns."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from deploy.local.servers import free_port
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from clickstream.settings import Settings

CLI = Path(sys.executable).parent / "clickstream"


class Run:
    """`clickstream run` on the test's servers: it starts only its worker and the API."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.data_dir = data_dir
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        servers = settings.environment()
        # The servers, and the test's secrets where the settings have any.
        env |= {
            name: value
            for name, value in servers.items()
            if name in ("CLICKSTREAM_INTERNAL_TOKENS", "CLICKSTREAM_CONTROL_SECRET")
        }
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


def internal_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header of the internal endpoints, where the settings have a token."""
    tokens = getattr(settings, "internal_tokens", None) or []
    return {"Authorization": f"Bearer {tokens[0].get_secret_value()}"} if tokens else {}

"""A worker started before its MongoDB replica set has a primary (a fresh cluster, where
the replica set is initiated by a job that may run later) waits for it, then serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx

from deploy.local.servers import LocalMongo, free_port
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from clickstream.settings import Settings


def test_a_worker_started_before_mongodb_waits_for_its_primary(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    mongodb_port, web_port = free_port(), free_port()
    settings = settings_factory(
        mongodb_uri=f"mongodb://127.0.0.1:{mongodb_port}/?replicaSet={LocalMongo.replica_set}",
        mongodb_server_selection_timeout_seconds=1.0,
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    env = {
        **inherited,
        **settings.environment(),
        "CLICKSTREAM_WORKER_ID": "worker-before-mongodb",
        "CLICKSTREAM_WORKER_WEB_PORT": str(web_port),
        "CLICKSTREAM_DATA_DIR": str(tmp_path / "worker"),
    }
    log = tmp_path / "worker.log"
    # Started here, not by a helper that waits for it to be ready: it is not, yet.
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "deploy.cli", "worker"], env=env, stdout=out, stderr=out
        )
    try:
        eventually(lambda: "waiting for MongoDB" in log.read_text(errors="replace"), timeout=30)
        with LocalMongo(tmp_path / "mongodb", mongodb_port):

            def ready() -> bool:
                try:
                    url = f"http://127.0.0.1:{web_port}/ready/"
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(ready, timeout=90)
            assert worker.poll() is None, "the same process: it waited, never exited"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)

"""A worker started before its MongoDB replica set has a primary (a fresh cluster, where
the replica set is initiated by a job that may run later) waits for it, then serves."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx

from deploy.local.servers import LocalMongo, free_port
from tests.utils.pipeline import Worker, eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from clickstream.settings import Settings


def test_a_worker_started_before_mongodb_waits_for_its_primary(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = settings_factory(
        mongodb_uri=f"mongodb://127.0.0.1:{port}/?replicaSet={LocalMongo.replica_set}",
        mongodb_server_selection_timeout_seconds=1.0,
    )
    worker = Worker(settings, tmp_path / "worker", "worker-before-mongodb")
    starting = threading.Thread(target=worker.start, daemon=True)  # returns once ready
    starting.start()
    try:
        eventually(lambda: "waiting for MongoDB" in worker.log(), timeout=30)
        mongo = LocalMongo(tmp_path / "mongodb", port).start()
        try:
            starting.join(90)
            assert httpx.get(f"{worker.url}/ready/", timeout=5).status_code == 200
        finally:
            worker.stop()
            mongo.stop()
    finally:
        worker.stop()  # also when MongoDB never came

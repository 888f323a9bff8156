"""Secrets stay secret: after a full `clickstream run` with a MongoDB password, tokens, keys
and a control secret from the environment, none of them is in its output, its logs or
run.json."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from pymongo import MongoClient

from deploy.local.servers import free_port
from tests.deploy.test_run_command import Run
from tests.servers import USE_DOCKER
from tests.utils.payloads import events_body, session_body

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="runs the project's own local servers")


def test_no_secret_in_the_output_logs_or_run_file(mongodb_uri: str, tmp_path: Path) -> None:
    password, token, key, control = (f"{name}-{uuid.uuid4().hex}" for name in "ptkc")
    user = f"clickstream-{uuid.uuid4().hex[:8]}"
    with MongoClient(mongodb_uri) as client:
        client.admin.command("createUser", user, pwd=password, roles=["root"])
    with_password = mongodb_uri.replace("mongodb://", f"mongodb://{user}:{password}@", 1)
    with_password += ("&" if "?" in with_password else "/?") + "authSource=admin"
    data_dir = tmp_path / ".clickstream"
    run = Run(
        data_dir,
        free_port(),
        free_port(),
        {
            "CLICKSTREAM_MONGODB_URI": with_password,
            "CLICKSTREAM_MONGODB_DATABASE": f"secrets_{uuid.uuid4().hex[:8]}",
            "CLICKSTREAM_INTERNAL_TOKENS": token,
            "CLICKSTREAM_INGEST_KEYS": key,
            "CLICKSTREAM_CONTROL_SECRET": control,
            "CLICKSTREAM_HTTP_ACCESS_LOG": "true",
        },
    )
    try:
        run_file = run.wait_ready()
        session = session_body()
        ingest = {"X-Clickstream-Key": key}
        registered = httpx.post(
            f"{run.url}/api/v1/clickstream/session", json=session, headers=ingest
        )
        added = httpx.post(
            f"{run.url}/api/v1/clickstream/session/events",
            json=events_body(session["session_id"], count=2),
            headers=ingest,
        )
        released = httpx.post(
            f"{run.url}/api/v1/clickstream/internal/batch/release",
            json={"release_id": uuid.uuid4().hex},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        refused = httpx.get(
            f"{run.url}/api/v1/clickstream/internal/batch",
            params={"batch_id": "0" * 24},
            headers={"Authorization": f"Bearer {token}-wrong"},
        )
    finally:
        output = run.terminate()

    assert (registered.status_code, added.status_code) == (200, 200)
    assert released.status_code == 200, released.text
    assert released.json()["session_count"] == 1, "MongoDB was reached with the password"
    assert refused.status_code == 401
    assert run_file["mongodb_uri"] == with_password.replace(password, "***")
    logs = {path.name: path.read_text(errors="replace") for path in data_dir.rglob("*.log")}
    assert logs, "the worker and servers log to the data dir"
    texts = {"output": output, "run.json": str(run_file), **logs}
    for secret in (password, token, key, control):
        leaks = [name for name, text in texts.items() if secret in text]
        assert not leaks, f"a secret appears in {leaks}"
    assert not (data_dir / "internal-token").exists(), "the environment's token wins"

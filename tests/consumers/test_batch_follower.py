"""`clickstream batch follow`: each released batch exported once into a directory of its own,
with a manifest, across restarts and stops by SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from tests.consumers.test_batch_export import clickstream
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from clickstream.settings import Settings
    from tests.utils.pipeline import Pipeline


def start_follower(settings: Settings, out: Path, *args: str) -> subprocess.Popen[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "batch", "follow", "--output-dir", str(out), *args],
        env={**inherited, **settings.environment()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stopped(follower: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, then what it printed once it exited (it must exit 0, in bounded time)."""
    follower.send_signal(signal.SIGTERM)
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err
    return out, err


def release_one(pipeline: Pipeline, events: int) -> str:
    session = session_body()
    pipeline.register(session)
    pipeline.add_events(session["session_id"], [event_body() for _ in range(events)])
    pipeline.wait_session(session["session_id"], events=events)
    released = pipeline.release(new_id())
    assert released.status_code == 200, released.text
    return released.json()["batch_id"]  # type: ignore[no-any-return]


def manifest_of(out: Path, batch_id: str) -> dict[str, object] | None:
    path = out / batch_id / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_each_batch_is_exported_once_across_restarts(pipeline: Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "batches"
    options = ("--format", "jsonl", "--rows", "sessions", "--rows", "training", "--group", new_id())
    first = release_one(pipeline, events=2)

    follower = start_follower(pipeline.settings, out, *options)
    eventually(lambda: manifest_of(out, first), timeout=60)
    stopped(follower)
    first_manifest = (out / first / "manifest.json").read_bytes()

    second = release_one(pipeline, events=3)  # while no follower runs
    (out / ".partial-left-by-a-kill").mkdir()
    follower = start_follower(pipeline.settings, out, *options)
    eventually(lambda: manifest_of(out, second), timeout=60)
    stopped(follower)

    assert sorted(p.name for p in out.iterdir()) == sorted([first, second])
    assert (out / first / "manifest.json").read_bytes() == first_manifest, "not exported again"
    for batch_id, events in ((first, 2), (second, 3)):
        manifest = manifest_of(out, batch_id)
        assert manifest is not None
        assert (manifest["session_count"], manifest["event_count"]) == (1, events)
        files = manifest["files"]
        assert isinstance(files, list)
        assert [(f["name"], f["rows"]) for f in files] == [
            ("sessions.jsonl", "sessions"),
            ("training.jsonl", "training"),
        ]
        for described in files:
            data = (out / batch_id / described["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == described["sha256"]
            assert len(data.splitlines()) == described["row_count"]
        # The same bytes as an export of the batch by hand.
        by_hand = tmp_path / f"{batch_id}.jsonl"
        done = clickstream(
            pipeline.settings, "batch", "export", batch_id, "--rows", "training", "-o", str(by_hand)
        )
        assert done.returncode == 0, done.stderr
        assert by_hand.read_bytes() == (out / batch_id / "training.jsonl").read_bytes()

    # A new group is given every batch again: each found complete, none written twice.
    manifests = {b: (out / b / "manifest.json").read_bytes() for b in (first, second)}
    again = clickstream(
        pipeline.settings,
        "batch",
        "follow",
        "--output-dir",
        str(out),
        *options[:-1],
        new_id(),
        "--idle-timeout",
        "3",
    )
    assert again.returncode == 0, again.stderr
    assert "already exported" in again.stderr
    assert {b: (out / b / "manifest.json").read_bytes() for b in (first, second)} == manifests

"""`clickstream batch export`: a released batch, as JSONL and as Parquet, holds exactly the
batch's sessions and events; `clickstream batch BATCH_ID` still shows the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from batches.store import BatchStore
from consumers.batch_export import export_batch
from deploy.local.servers import LocalGateway
from tests.utils.payloads import event_body, new_id, session_body

if TYPE_CHECKING:
    from pathlib import Path

    from clickstream.settings import Settings
    from tests.utils.pipeline import Pipeline


def clickstream(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The `clickstream` command, as an operator runs it, on the test's servers."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        env={**inherited, **settings.environment()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def released_batches(pipeline: Pipeline) -> tuple[str, str]:
    """Two batches: three sessions, then one of them again with a new event (a repeat)
    and a new session."""
    sessions = [
        session_body(search_meta={"lang": "en", "big": 2**70}),
        session_body(user_id=None, search_meta=None),
        session_body(),
    ]
    for count, session in enumerate(sessions):
        pipeline.register(session)
        events = [event_body(item_info={"pos": n, "ü": [1.5, None]}) for n in range(count)]
        if events:
            pipeline.add_events(session["session_id"], events)
    first = pipeline.release(new_id())
    assert first.status_code == 200, first.text

    newcomer = session_body()
    pipeline.register(newcomer)
    pipeline.add_events(sessions[2]["session_id"], [event_body(event_type="view")])
    second = pipeline.release(new_id())
    assert second.status_code == 200, second.text
    return first.json()["batch_id"], second.json()["batch_id"]


def without_nulls(value: Any) -> Any:
    """Nulls dropped from objects: a Parquet column is null where the API leaves a field out."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    """The Parquet file's rows, with the JSON text columns parsed back, without nulls."""
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["search_meta"] = json.loads(row["search_meta"]) if row["search_meta"] else None
        row["payload_filter"] = json.loads(row["payload_filter"]) if row["payload_filter"] else None
        for item in [*row["search_results"], *row["events"]]:
            item["meta"] = json.loads(item["meta"]) if item["meta"] else None
    return without_nulls(rows)  # type: ignore[no-any-return]


def test_a_released_batch_exports_as_jsonl_and_parquet(pipeline: Pipeline, tmp_path: Path) -> None:
    batch_ids = released_batches(pipeline)

    for batch_id in batch_ids:
        expected = pipeline.batch_sessions(batch_id)
        jsonl, parquet = tmp_path / f"{batch_id}.jsonl", tmp_path / f"{batch_id}.parquet"

        as_jsonl = clickstream(pipeline.settings, "batch", "export", batch_id, "-o", str(jsonl))
        as_parquet = clickstream(
            pipeline.settings,
            "batch",
            "export",
            batch_id,
            "--format",
            "parquet",
            "-o",
            str(parquet),
        )
        to_stdout = clickstream(pipeline.settings, "batch", "export", batch_id, "--output", "-")

        for done in (as_jsonl, as_parquet, to_stdout):
            assert done.returncode == 0, done.stderr
        events = sum(len(s["events"]) for s in expected)
        assert f"exported: {len(expected)} sessions, {events} events" in as_jsonl.stdout
        lines = jsonl.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == expected
        assert [json.loads(line) for line in to_stdout.stdout.splitlines()] == expected
        assert parquet_rows(parquet) == without_nulls(expected)

    # Written page by page: a row group per page of sessions.
    store = BatchStore.from_settings(pipeline.settings)
    try:
        summary = export_batch(store, batch_ids[0], tmp_path / "paged.parquet", "parquet", 2)
    finally:
        store.close()
    assert (summary.sessions, summary.events) == (3, 3)
    assert pq.ParquetFile(tmp_path / "paged.parquet").metadata.num_row_groups == 2
    paged = parquet_rows(tmp_path / "paged.parquet")
    assert paged == without_nulls(pipeline.batch_sessions(batch_ids[0]))

    first, second = (pipeline.batch_sessions(batch_id) for batch_id in batch_ids)
    assert [s["is_repeat"] for s in first] == [False, False, False]
    assert sorted(s["is_repeat"] for s in second) == [False, True]
    assert sum(len(s["events"]) for s in first) == 3
    assert sum(len(s["events"]) for s in second) == 3  # the repeat's whole history: 2 + 1


def test_unknown_batch_and_parquet_to_stdout_are_refused(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    unknown = clickstream(pipeline.settings, "batch", "export", "0" * 24, "-o", "-")
    assert unknown.returncode == 1
    assert f"error: no batch '{'0' * 24}'" in unknown.stderr

    batch_id, _ = released_batches(pipeline)
    refused = clickstream(
        pipeline.settings, "batch", "export", batch_id, "--format", "parquet", "-o", "-"
    )
    assert refused.returncode == 1
    assert "Parquet cannot be written to stdout" in refused.stderr


def test_batch_with_an_id_still_shows_the_batch(pipeline: Pipeline, tmp_path: Path) -> None:
    batch_id, _ = released_batches(pipeline)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    env = {**inherited, **pipeline.settings.environment()}
    gateway = LocalGateway(tmp_path / "gateway", env=env).start()
    try:
        shown = clickstream(pipeline.settings, "batch", batch_id, "--url", gateway.address)
        shown_too = clickstream(
            pipeline.settings, "batch", "show", batch_id, "--url", gateway.address
        )
    finally:
        gateway.stop()

    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == pipeline.batch(batch_id).json()
    assert shown_too.stdout == shown.stdout

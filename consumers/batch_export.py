"""Exporting a released batch to a file, for fine-tuning stacks that do not read MongoDB.

One row per session with all its events, in ``session_number`` order, read page by page
(``BatchStore.iter_sessions``), so memory stays bounded whatever the batch's size:

- JSONL: one JSON object per line, the session as ``GET .../batch/sessions`` shows it
  (``session_number``, ``is_repeat``, ``meta`` objects as JSON).
- Parquet (the ``parquet`` extra, pyarrow): one row group per page of sessions, the same
  fields (null where the API leaves one out, e.g. ``is_new`` of events outside a repeat).
  The free-form objects (``search_meta``, ``meta`` of results and events) are JSON text
  columns: JSON numbers (integers beyond 64 bits among them) have no Arrow type.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

from batches.store import RELEASED, BatchStore, parse_batch_id
from consumers.exceptions import BatchExportError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from bson import ObjectId

logger = logging.getLogger(__name__)

ExportFormat = Literal["jsonl", "parquet"]
STDOUT = "-"
# Sessions per MongoDB page and per Parquet row group.
PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class ExportSummary:
    batch_id: str
    sessions: int
    events: int


def export_batch(
    store: BatchStore,
    batch_id: str,
    output: Path | str,
    export_format: ExportFormat = "jsonl",
    page_size: int = PAGE_SIZE,
) -> ExportSummary:
    """Write every session of a released batch to ``output`` (``"-"``: stdout, JSONL only).

    Args:
        store: the batches (``CLICKSTREAM_MONGODB_URI``, ``CLICKSTREAM_MONGODB_DATABASE``).
        batch_id: the batch, as a release answered it.
        output: a file path, replaced if it exists, or ``"-"``.
        export_format: ``jsonl`` or ``parquet``.
        page_size: sessions in memory at once (and per Parquet row group).

    Raises:
        BatchExportError: unknown batch, batch not released, or Parquet to stdout.
    """
    oid = _released_batch(store, batch_id)
    sessions = store.iter_sessions(oid, page_size=page_size)
    if export_format == "parquet":
        if str(output) == STDOUT:
            raise BatchExportError("Parquet cannot be written to stdout: give --output a file")
        counts = _write_parquet(sessions, output, page_size)
    elif str(output) == STDOUT:
        counts = _write_jsonl(sessions, sys.stdout)
        sys.stdout.flush()
    else:
        with open(output, "w", encoding="utf-8") as file:
            counts = _write_jsonl(sessions, file)
    summary = ExportSummary(batch_id, *counts)
    logger.info(
        "batch exported batch_id=%s format=%s sessions=%s events=%s output=%s",
        batch_id,
        export_format,
        summary.sessions,
        summary.events,
        output,
    )
    return summary


def _released_batch(store: BatchStore, batch_id: str) -> ObjectId:
    oid = parse_batch_id(batch_id)
    batch = store.get(oid) if oid is not None else None
    if oid is None or batch is None:
        raise BatchExportError(f"no batch {batch_id!r}")
    if batch.status != RELEASED:
        raise BatchExportError(f"batch {batch_id} is {batch.status}, not released")
    return oid


def _write_jsonl(sessions: Iterable[dict[str, Any]], file: TextIO) -> tuple[int, int]:
    count = events = 0
    for session in sessions:
        file.write(json.dumps(session, ensure_ascii=False, separators=(",", ":")))
        file.write("\n")
        count += 1
        events += len(session["events"])
    return count, events


def parquet_schema() -> Any:
    """The Arrow schema of an exported batch: one row per session."""
    import pyarrow as pa  # noqa: PLC0415 - an optional extra

    return pa.schema(
        [
            pa.field("session_number", pa.int64(), nullable=False),
            pa.field("session_id", pa.string(), nullable=False),
            pa.field("search_query", pa.string(), nullable=False),
            pa.field(
                "search_results",
                pa.list_(
                    pa.struct(
                        [
                            pa.field("object_id", pa.string(), nullable=False),
                            pa.field("rank", pa.float64()),
                            pa.field("meta", pa.string()),
                        ]
                    )
                ),
                nullable=False,
            ),
            pa.field("search_meta", pa.string()),
            pa.field("user_id", pa.string()),
            pa.field("created_at", pa.int64(), nullable=False),
            pa.field("is_irrelevant", pa.bool_(), nullable=False),
            pa.field("is_repeat", pa.bool_(), nullable=False),
            # A repeat's previous batch, and how many of its events are new since then.
            pa.field("previous_batch_id", pa.string()),
            pa.field("new_event_count", pa.int64()),
            pa.field("event_count", pa.int64(), nullable=False),
            pa.field(
                "events",
                pa.list_(
                    pa.struct(
                        [
                            pa.field("event_id", pa.string(), nullable=False),
                            pa.field("object_id", pa.string(), nullable=False),
                            pa.field("event_type", pa.string(), nullable=False),
                            pa.field("created_at", pa.int64(), nullable=False),
                            pa.field("meta", pa.string()),
                            pa.field("is_new", pa.bool_()),
                        ]
                    )
                ),
                nullable=False,
            ),
        ]
    )


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _check_fields(session: dict[str, Any], schema: Any) -> None:
    """A field the schema lacks would be dropped silently by pyarrow: refuse it instead."""
    unknown = set(session) - set(schema.names)
    events = schema.field("events").type.value_type
    for event in session["events"]:
        unknown |= {f"events.{name}" for name in event if events.get_field_index(name) < 0}
    if unknown:
        raise BatchExportError(f"fields missing from the Parquet schema: {sorted(unknown)}")


def _parquet_row(session: dict[str, Any]) -> dict[str, Any]:
    return {
        **session,
        "search_results": [
            {**result, "meta": _json_text(result["meta"])} for result in session["search_results"]
        ],
        "search_meta": _json_text(session["search_meta"]),
        "events": [{**event, "meta": _json_text(event["meta"])} for event in session["events"]],
    }


def _pages(sessions: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    page: list[dict[str, Any]] = []
    for session in sessions:
        page.append(session)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _write_parquet(
    sessions: Iterable[dict[str, Any]], output: Path | str, page_size: int
) -> tuple[int, int]:
    try:
        import pyarrow as pa  # noqa: PLC0415 - an optional extra
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:
        raise BatchExportError("Parquet needs pyarrow: pip install 'clickstream[parquet]'") from exc
    schema = parquet_schema()
    count = events = 0
    with pq.ParquetWriter(str(output), schema, compression="zstd") as writer:
        for page in _pages(sessions, page_size):
            for session in page:
                _check_fields(session, schema)
            rows = [_parquet_row(session) for session in page]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(rows)
            events += sum(len(row["events"]) for row in rows)
    return count, events

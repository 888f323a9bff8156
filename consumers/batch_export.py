"""Exporting a released batch to a file, for fine-tuning stacks that do not read MongoDB.

One row per session with all its events, in ``session_number`` order, read page by page
(``BatchStore.iter_sessions``), so memory stays bounded whatever the batch's size:

- JSONL: one JSON object per line, the session as ``GET .../batch/sessions`` shows it
  (``session_number``, ``is_repeat``, ``meta`` objects as JSON).
- Parquet (the ``parquet`` extra, pyarrow): one row group per page of sessions, the same
  fields (null where the API leaves one out, e.g. ``is_new`` of events outside a repeat).
  The free-form objects (``search_meta``, ``meta`` of results and events) are JSON text
  columns: JSON numbers (integers beyond 64 bits among them) have no Arrow type.

Or, with a training shape (``consumers.training``), training examples: labelled
(session, result) rows, (query, positive) pairs or (query, positive, negative) triplets,
in the same two formats. Either way the same batch always exports to the same bytes, and
what is read is checked against the batch's content digest (``batches.digest``): a file
is only put in place once every session checked out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TextIO, TypedDict, TypeVar, cast

from bson import ObjectId

from batches.exceptions import BatchExpiredError
from batches.store import RELEASED, Batch, BatchStore, parse_batch_id
from consumers.exceptions import BatchExportError
from consumers.training import (
    RowShape,
    TrainingOptions,
    arrow_schema,
    shaped_rows,
    sort_by_type,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from batches.public import PublicBatchSession
    from consumers.training import ShapedRow
    from schemas.records import SortBy


class ParquetSearchResult(TypedDict):
    object_id: str
    rank: float | None
    meta: str | None


class ParquetEvent(TypedDict):
    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: str | None
    is_new: NotRequired[bool]


class ParquetSessionRow(TypedDict):
    """A session as a row of ``parquet_schema``: its free-form objects as JSON text."""

    session_number: int
    session_id: str
    search_query: str
    search_results: list[ParquetSearchResult]
    search_meta: str | None
    payload_filter: str | None
    sort_by: SortBy | None
    user_id: str | None
    created_at: int
    is_irrelevant: bool
    is_repeat: bool
    previous_batch_id: str | None
    new_event_count: int
    event_count: int
    events: list[ParquetEvent]


if TYPE_CHECKING:
    ExportRow = PublicBatchSession | ParquetSessionRow | ShapedRow

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

ExportFormat = Literal["jsonl", "parquet"]
STDOUT = "-"
# Sessions per MongoDB page and per Parquet row group.
PAGE_SIZE = 500
# Training rows per Parquet row group.
ROW_GROUP_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class ExportSummary:
    batch_id: str
    sessions: int
    events: int
    rows: int
    """Rows written: sessions, or training examples."""
    content_digest: str | None
    """The batch's digest, which what was read matched (None: a batch without one)."""


def export_batch(
    store: BatchStore,
    batch_id: str,
    output: Path | str,
    export_format: ExportFormat = "jsonl",
    page_size: int = PAGE_SIZE,
    shape: RowShape = RowShape.SESSIONS,
    options: TrainingOptions | None = None,
) -> ExportSummary:
    """Write every session of a released batch to ``output`` (``"-"``: stdout, JSONL only).

    Args:
        store: the batches (``CLICKSTREAM_MONGODB_URI``, ``CLICKSTREAM_MONGODB_DATABASE``).
        batch_id: the batch, as a release answered it.
        output: a file path, replaced if it exists, or ``"-"``.
        export_format: ``jsonl`` or ``parquet``.
        page_size: sessions in memory at once (and per Parquet row group).
        shape: sessions as stored, or one of the training shapes.
        options: how training rows are chosen (``TrainingOptions``).

    Raises:
        BatchExportError: unknown batch, batch not released, or Parquet to stdout.
        BatchContentMismatchError: the batch read is not what was written (no file is
            left; on stdout, after the rows).
    """
    batch = _released_batch(store, batch_id)
    if export_format == "parquet" and str(output) == STDOUT:
        raise BatchExportError("Parquet cannot be written to stdout: give --output a file")
    sessions = _Counting(store.iter_sessions(ObjectId(batch.batch_id), page_size=page_size))
    # Each session's rows: itself, or its training examples.
    examples: Iterable[Sequence[ExportRow]]
    if shape is RowShape.SESSIONS:
        examples = ([session] for session in sessions)
    else:
        examples = shaped_rows(batch_id, sessions, shape, options or TrainingOptions())
    if str(output) == STDOUT:
        rows = _to_stdout(lambda file: _write_jsonl(examples, file))
    else:
        with _put_in_place(Path(output)) as path:
            if export_format == "parquet":
                rows = _write_parquet(examples, path, shape, page_size)
            else:
                with path.open("w", encoding="utf-8") as file:
                    rows = _write_jsonl(examples, file)
    summary = ExportSummary(
        batch_id, sessions.sessions, sessions.events, rows, batch.content_digest
    )
    logger.info(
        "batch exported batch_id=%s shape=%s format=%s sessions=%s events=%s rows=%s output=%s",
        batch_id,
        shape,
        export_format,
        summary.sessions,
        summary.events,
        summary.rows,
        output,
    )
    return summary


def _released_batch(store: BatchStore, batch_id: str) -> Batch:
    oid = parse_batch_id(batch_id)
    batch = store.get(oid) if oid is not None else None
    if batch is None:
        raise BatchExportError(f"no batch {batch_id!r}")
    if batch.expired:
        raise BatchExpiredError(
            f"batch {batch_id} is {batch.status} (CLICKSTREAM_BATCH_RETENTION_DAYS): "
            "its sessions are gone"
        )
    if batch.status != RELEASED:
        raise BatchExportError(f"batch {batch_id} is {batch.status}, not released")
    return batch


class _Counting:
    """The sessions, counted (and their events) as they are read."""

    def __init__(self, sessions: Iterable[PublicBatchSession]) -> None:
        self._sessions = sessions
        self.sessions = self.events = 0

    def __iter__(self) -> Iterator[PublicBatchSession]:
        for session in self._sessions:
            self.sessions += 1
            self.events += len(session["events"])
            yield session


def _to_stdout(write: Callable[[TextIO], _T]) -> _T:
    written = write(sys.stdout)
    sys.stdout.flush()
    return written


@contextlib.contextmanager
def _put_in_place(output: Path) -> Iterator[Path]:
    """A path beside ``output`` to write to, renamed to ``output`` once the writing ended
    without an error (removed otherwise): ``output`` is whole or absent."""
    partial = output.with_name(f".{output.name}.partial")
    try:
        yield partial
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


def _json_line(row: ExportRow) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def _write_jsonl(examples: Iterable[Sequence[ExportRow]], file: TextIO) -> int:
    rows = 0
    for session_rows in examples:
        file.writelines(_json_line(row) for row in session_rows)
        rows += len(session_rows)
    return rows


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
            pa.field("payload_filter", pa.string()),
            pa.field("sort_by", sort_by_type()),
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


def _json_text(value: object) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _check_fields(session: PublicBatchSession, schema: Any) -> None:
    """A field the schema lacks would be dropped silently by pyarrow: refuse it instead."""
    unknown = set(session) - set(schema.names)
    events = schema.field("events").type.value_type
    for event in session["events"]:
        unknown |= {f"events.{name}" for name in event if events.get_field_index(name) < 0}
    if unknown:
        raise BatchExportError(f"fields missing from the Parquet schema: {sorted(unknown)}")


def _parquet_row(session: PublicBatchSession, schema: Any) -> ParquetSessionRow:
    """A session as a row of ``parquet_schema`` (its free-form objects as JSON text)."""
    _check_fields(session, schema)
    return {
        **session,
        "search_results": [
            {**result, "meta": _json_text(result["meta"])} for result in session["search_results"]
        ],
        "search_meta": _json_text(session["search_meta"]),
        "payload_filter": _json_text(session["payload_filter"]),
        "events": [{**event, "meta": _json_text(event["meta"])} for event in session["events"]],
    }


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # noqa: PLC0415 - an optional extra
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:
        raise BatchExportError("Parquet needs pyarrow: pip install 'clickstream[parquet]'") from exc
    return pa, pq


def _write_parquet(
    examples: Iterable[Sequence[ExportRow]], output: Path | str, shape: RowShape, page_size: int
) -> int:
    """Write each session's rows, in row groups of a page of sessions (sessions as stored) or
    of about ``ROW_GROUP_ROWS`` rows (training rows); the number of rows written."""
    pa, pq = _pyarrow()
    if shape is RowShape.SESSIONS:
        schema, group_rows = parquet_schema(), page_size
        # Sessions as stored: each a row of its own.
        sessions = cast("Iterable[Sequence[PublicBatchSession]]", examples)
        examples = ([_parquet_row(row, schema) for row in rows] for rows in sessions)
    else:
        schema, group_rows = arrow_schema(shape), ROW_GROUP_ROWS
    written = 0
    group: list[ExportRow] = []
    with pq.ParquetWriter(str(output), schema, compression="zstd") as writer:
        for session_rows in examples:
            group.extend(session_rows)
            if len(group) >= group_rows:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                written += len(group)
                group = []
        if group:  # with no row at all, the file still has its schema
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            written += len(group)
    return written

"""Follows the batch topic and exports each released batch once, for a job scheduler.

Each batch goes to a directory of its own, ``<output_dir>/<batch_id>/``: one file per row
shape asked for (``sessions.parquet``, ``training.parquet``, ...) and ``manifest.json``,
written last, holding the batch's ids, counts and content digest (as they are now, if an
erasure took sessions out since the announcement) and each file's rows, size and SHA-256.
A directory is built under a temporary name and renamed when complete, so one either
exists whole or not at all. A batch is done for the follower's group only once its
directory is complete: a follower that dies mid-batch exports it again after a restart
(its half-built directory is discarded), and a batch delivered again whose manifest exists
is skipped, so a restart neither repeats nor skips one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from bson import ObjectId

from batches.expiry import BatchExpiry
from consumers.batch_export import export_batch
from consumers.batch_reader import BatchReader, ReleasedBatch
from consumers.exceptions import BatchExportError
from consumers.training import RowShape, TrainingOptions

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator
    from pathlib import Path

    from batches.store import Batch, BatchStore
    from clickstream.settings import Settings
    from consumers.batch_export import ExportFormat

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_PARTIAL_PREFIX = ".partial-"
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ExportedFile:
    name: str
    rows: str
    """The row shape (``sessions``, ``training``, ``pairs``, ``triplets``)."""
    row_count: int
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest(ReleasedBatch):
    """What ``manifest.json`` of an exported batch holds: the batch's announcement, and what
    was written of it."""

    erased_session_count: int = 0
    """Sessions erased since the announcement: the counts and digest are of the rest."""
    exported_at_ms: int = 0
    format: str = ""
    files: list[ExportedFile] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**data, "files": [ExportedFile(**f) for f in data["files"]]})


class BatchFollower:
    """Exports every released batch into ``output_dir``, once.

    Args:
        settings: Kafka, MongoDB and the topic prefix.
        output_dir: where each batch's directory goes (created if missing).
        shapes: the files of each batch, one per row shape.
        export_format: ``jsonl`` or ``parquet``.
        options: how training rows are chosen.
        group_id: the follower's consumer group: where it resumes after a restart.
        keep: hold the batches this group has not exported yet, so that none expires
            before it did (``batches.expiry``).
    """

    def __init__(
        self,
        settings: Settings,
        output_dir: Path,
        shapes: tuple[RowShape, ...] = (RowShape.SESSIONS,),
        export_format: ExportFormat = "parquet",
        options: TrainingOptions | None = None,
        group_id: str = "batch-follower",
        keep: bool = True,
    ) -> None:
        if not shapes:
            raise ValueError("at least one row shape to export")
        self._settings = settings
        self._output_dir = output_dir
        self._shapes = tuple(dict.fromkeys(shapes))
        self._format: ExportFormat = export_format
        self._options = options or TrainingOptions()
        self._group_id = group_id
        self._keep = keep

    def follow(
        self, stop: threading.Event | None = None, idle_timeout: float | None = None
    ) -> Iterator[Manifest]:
        """Export each batch as it is released, yielding its manifest (also for a batch
        exported before, found complete). Returns when ``stop`` is set (between batches) or
        after ``idle_timeout`` seconds without a batch."""
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._discard_partial()
        with BatchReader(self._settings, group_id=self._group_id) as reader:
            expiry = BatchExpiry(reader.store)
            if self._keep:
                expiry.hold(self._group_id)
            for batch in reader.follow(idle_timeout=idle_timeout, stop=stop):
                manifest = self._exported(reader.store, batch)
                if self._keep:
                    expiry.exported(self._group_id, batch.released_at_ms)
                if manifest is not None:
                    yield manifest
                if stop is not None and stop.is_set():
                    return

    def _discard_partial(self) -> None:
        for partial in self._output_dir.glob(f"{_PARTIAL_PREFIX}*"):
            logger.info("half-exported batch discarded path=%s", partial)
            shutil.rmtree(partial)

    def _exported(self, store: BatchStore, batch: ReleasedBatch) -> Manifest | None:
        """The batch's manifest, once exported (None: it expired before)."""
        final = self._output_dir / batch.batch_id
        if (final / MANIFEST).exists():
            logger.info("batch already exported, skipped batch_id=%s", batch.batch_id)
            return Manifest.read(final / MANIFEST)
        current = store.get(ObjectId(batch.batch_id))
        if current is not None and current.expired:
            logger.warning(
                "batch expired before it was exported, skipped batch_id=%s (follow with "
                "keep to hold batches until exported)",
                batch.batch_id,
            )
            return None
        batch, erased = _batch_now(batch, current)
        partial = self._output_dir / f"{_PARTIAL_PREFIX}{batch.batch_id}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        files = []
        for shape in self._shapes:
            name = f"{shape.value}.{self._format}"
            summary = export_batch(
                store,
                batch.batch_id,
                partial / name,
                self._format,
                shape=shape,
                options=self._options,
            )
            if (summary.sessions, summary.events) != (batch.session_count, batch.event_count):
                raise BatchExportError(
                    f"batch {batch.batch_id} announced {batch.session_count} sessions and "
                    f"{batch.event_count} events; MongoDB holds {summary.sessions} and "
                    f"{summary.events}"
                )
            if summary.content_digest != batch.content_digest:
                raise BatchExportError(
                    f"batch {batch.batch_id} announced content digest {batch.content_digest}; "
                    f"MongoDB's batch says {summary.content_digest}"
                )
            files.append(_described(partial / name, shape, summary.rows))
        manifest = Manifest(
            **asdict(batch),
            erased_session_count=erased,
            exported_at_ms=int(time.time() * 1000),
            format=self._format,
            files=files,
        )
        (partial / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        if final.exists():  # a directory without its manifest: never completed
            shutil.rmtree(final)
        partial.rename(final)
        logger.info(
            "batch exported batch_id=%s files=%s dir=%s",
            batch.batch_id,
            [f.name for f in files],
            final,
        )
        return manifest


def _batch_now(batch: ReleasedBatch, current: Batch | None) -> tuple[ReleasedBatch, int]:
    """The announced batch with its counts and digest as they are now (``current``), after
    erasures that took sessions out of it since (``batches.erasures``); how many they took."""
    if current is None or not current.erased_session_count:
        return batch, 0
    now = replace(
        batch,
        session_count=current.total("session_count"),
        event_count=current.total("event_count"),
        repeat_session_count=current.total("repeat_session_count"),
        content_digest=current.content_digest,
    )
    return now, current.erased_session_count


def _described(path: Path, shape: RowShape, rows: int) -> ExportedFile:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return ExportedFile(path.name, shape.value, rows, path.stat().st_size, digest.hexdigest())

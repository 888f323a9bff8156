"""The worker's committed state on disk (``CLICKSTREAM_WORKER_STORE=rocksdb``, the default):
one RocksDB per worker, each partition under a key prefix of its own.

A partition's changes go in as one atomic write batch with the changelog position they
bring the partition to, so what is on disk is always the state of some changelog
position: a worker that restarts, even after SIGKILL, reads only the changelog from there
on. The write-ahead log is off (a batch lost with the memtable leaves an older position
behind, and the changelog has the rest). Memory is bounded by a shared block cache and
write buffers (``CLICKSTREAM_WORKER_ROCKSDB_*``), whatever the number of sessions.

Local keys of a partition ``P`` (2 bytes, big-endian):

- ``P v <state key>``: the value, pickled (the changelog has it in Avro; here it is read
  often, and pickle decodes it in a fifth of the time: ``FORMAT`` names the encoding, and a
  disk written otherwise is dropped and rebuilt from the changelog);
- ``P d <session id>``: the session is dirty (a release must look at it);
- ``P t <kind> <since ms, 8 bytes> <session id>``: what a tick may do to the session and
  since when (``join.watched``);
- ``P #n``: how many sessions; ``P #p``: changelog position and when it was written.

A partition's state older than ``max_age_ms`` is dropped when the partition is opened: the
changelog's compaction may have removed tombstones it never saw.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import struct
import time
from typing import TYPE_CHECKING, Any

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from stream_app import join
from stream_app.state.keys import Kind, session_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from stream_app.state.partition import Change

logger = logging.getLogger(__name__)

_VALUE = b"v"
_DIRTY = b"d"
_DUE = b"t"
_COUNT = b"#n"
_POSITION = b"#p"
_POSITION_FORMAT = struct.Struct(">qq")  # changelog position, wall clock ms
_COUNT_FORMAT = struct.Struct(">q")
_PICKLE = 5
# The encoding of the values on disk; another one found there is dropped.
FORMAT = b"pickle-5"
_FORMAT_KEY = b"\xff\xffformat"


class LocalStore:
    """The worker's RocksDB.

    Args:
        path: its directory (under ``CLICKSTREAM_DATA_DIR``).
        block_cache_bytes: ``CLICKSTREAM_WORKER_ROCKSDB_BLOCK_CACHE_BYTES``.
        write_buffer_bytes: ``CLICKSTREAM_WORKER_ROCKSDB_WRITE_BUFFER_BYTES`` (each of two).
        max_open_files: ``CLICKSTREAM_WORKER_ROCKSDB_MAX_OPEN_FILES``.
    """

    def __init__(
        self,
        path: Path,
        *,
        block_cache_bytes: int,
        write_buffer_bytes: int,
        max_open_files: int,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(block_cache_bytes))
        table.set_cache_index_and_filter_blocks(True)
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(write_buffer_bytes)
        options.set_max_write_buffer_number(2)
        options.set_max_open_files(max_open_files)
        options.set_compression_type(DBCompressionType.lz4())
        options.set_max_background_jobs(2)
        self.path = path
        try:
            self.db = Rdict(str(path), options)
        except Exception as exc:  # a corrupt or foreign directory: the changelog rebuilds it
            logger.warning("local state unreadable, rebuilt path=%s error=%s", path, exc)
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            self.db = Rdict(str(path), options)
        if self.db.get(_FORMAT_KEY) != FORMAT:
            if self.db.get(_FORMAT_KEY) is not None:
                logger.warning("local state of another format dropped path=%s", path)
            self.db.delete_range(b"", _FORMAT_KEY)
            self.db.put(_FORMAT_KEY, FORMAT)
        write = WriteOptions()
        # An attribute at run time, whatever rocksdict's stubs say.
        write.disable_wal = True  # type: ignore[method-assign,assignment]
        self.db.set_write_options(write)

    def partition(self, partition: int, max_age_ms: int) -> RocksPartition:
        """The state of ``partition`` as this disk has it (dropped if too old)."""
        found = RocksPartition(self.db, partition)
        written_at = found.written_at_ms
        if written_at is not None and time.time() * 1000 - written_at > max_age_ms:
            logger.warning(
                "local state too old, rebuilt from the changelog partition=%s age_s=%s",
                partition,
                round((time.time() * 1000 - written_at) / 1000),
            )
            found.drop()
        return found

    def close(self) -> None:
        self.db.flush()
        self.db.close()


class RocksPartition:
    """One partition of the local RocksDB."""

    def __init__(self, db: Rdict, partition: int) -> None:
        self.partition = partition
        self._db = db
        self._prefix = partition.to_bytes(2, "big")
        self._values = self._prefix + _VALUE

    def get(self, key: bytes) -> Any:
        raw = self._db.get(self._values + key)
        return None if raw is None else pickle.loads(raw)  # noqa: S301 - our own, on our disk

    def _scan(self, start: bytes, end: bytes) -> Iterator[bytes]:
        """Keys in [start, end)."""
        cursor = self._db.iter()
        cursor.seek(start)
        while cursor.valid():
            key = cursor.key()
            if key >= end:
                return
            yield key
            cursor.next()

    def dirty_sessions(self) -> Iterator[str]:
        start = self._prefix + _DIRTY
        return iter([key[3:].decode() for key in self._scan(start, _after(start))])

    def watched_sessions(self, up_to: Mapping[str, int]) -> Iterator[str]:
        found: list[str] = []
        for kind, since in up_to.items():
            start = self._prefix + _DUE + kind.encode()
            if since >= 0:
                end = start + _time_bytes(since + 1)
                found.extend(key[12:].decode() for key in self._scan(start, end))
        return iter(found)

    def session_ids(self) -> Iterator[str]:
        start = self._values + Kind.ENTRY.prefix
        return (session_of(key[3:]) for key in self._scan(start, _after(start)))

    @property
    def entry_count(self) -> int:
        raw = self._db.get(self._prefix + _COUNT)
        return 0 if raw is None else int(_COUNT_FORMAT.unpack(raw)[0])

    @property
    def position(self) -> int:
        raw = self._db.get(self._prefix + _POSITION)
        return 0 if raw is None else int(_POSITION_FORMAT.unpack(raw)[0])

    @property
    def written_at_ms(self) -> int | None:
        raw = self._db.get(self._prefix + _POSITION)
        return None if raw is None else int(_POSITION_FORMAT.unpack(raw)[1])

    def apply(self, changes: Sequence[Change], position: int) -> None:
        batch = WriteBatch(raw_mode=True)
        prefix, values = self._prefix, self._values
        count = 0
        for change in changes:
            key = change.key
            if change.value is None:
                batch.delete(values + key)
            else:
                batch.put(values + key, pickle.dumps(change.value, protocol=_PICKLE))
            if change.kind is Kind.ENTRY:
                count += (change.value is not None) - (change.old is not None)
                self._index(batch, session_of(key).encode(), change.old, change.value)
        if count:
            batch.put(prefix + _COUNT, _COUNT_FORMAT.pack(self.entry_count + count))
        batch.put(prefix + _POSITION, _POSITION_FORMAT.pack(position, int(time.time() * 1000)))
        self._db.write(batch)

    def _index(self, batch: WriteBatch, session: bytes, old: Any, new: Any) -> None:
        dirty = self._prefix + _DIRTY + session
        if new is None or join.is_fully_released(new):
            batch.delete(dirty)
        else:
            batch.put(dirty, b"")
        was = None if old is None else join.watched(old)
        now = None if new is None else join.watched(new)
        if was != now:
            if was is not None:
                batch.delete(self._watch_key(was) + session)
            if now is not None:
                batch.put(self._watch_key(now) + session, b"")

    def _watch_key(self, watch: tuple[str, int]) -> bytes:
        return self._prefix + _DUE + watch[0].encode() + _time_bytes(watch[1])

    def drop(self) -> None:
        """Forget everything of this partition here."""
        self._db.delete_range(self._prefix, _after(self._prefix))

    def close(self) -> None:
        """Nothing to release: the RocksDB is the worker's, the partition a prefix of it."""


def _time_bytes(when_ms: int) -> bytes:
    return max(when_ms, 0).to_bytes(8, "big")


def _after(prefix: bytes) -> bytes:
    """The first key past every key starting with ``prefix``."""
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")

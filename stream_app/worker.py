"""``clickstream worker``: one stream worker process.

Its main thread reads the sessions and events topics in batches and handles them
(``processor``); the partitions it holds each have their state (``state``) and a
transactional writer (``changelog``), set up when the group assigns the partition (the
state restored before anything is read) and dropped when it is revoked. Beside it run the
web server (``web``) and, while this worker holds partition 0, the release coordinator.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from batches.erasures import ErasureStore
from batches.expiry import BatchExpiry
from batches.store import BatchStore
from clickstream.shutdown import close_within
from schemas import AvroCodec, Topics
from stream_app import changelog, group, metrics
from stream_app.control_auth import ControlAuth
from stream_app.coordinator import ReleaseCoordinator
from stream_app.forgetting import Forgetting
from stream_app.handlers import Handlers
from stream_app.part_writer import PartWriter
from stream_app.processor import EXIT_HANDLER_FAILED, Processor
from stream_app.session_view import read_session
from stream_app.source import SourceConsumer, StartAt
from stream_app.state.memory import MemoryPartition
from stream_app.state.partition import PartitionState
from stream_app.state.rocksdb import LocalStore
from stream_app.watchdog import CallWatchdog
from stream_app.web import Owners, WorkerWeb

if TYPE_CHECKING:
    from types import FrameType

    from clickstream.settings import Settings
    from stream_app.state.partition import Backend

logger = logging.getLogger(__name__)

# The last resort once SIGTERM came: whatever still waits on a gone broker, exit.
# Within it (a stop takes at most 10 s, servers up or not) the LeaveGroup gets the most
# time: without it, the partitions wait for the member's session to expire (for ever on
# the local broker).
_STOP_DEADLINE_SECONDS = 8.0
_LEAVE_SECONDS = 3.0
_CLOSE_SECONDS = 1.5
_POLL_SECONDS = 0.2
_LAGS_SECONDS = 0.2
# A librdkafka call still blocked this long after its own timeout (30 s) stops the worker.
_STUCK_SECONDS = 60.0
_RESTORE_RETRY_SECONDS = 1.0
_MONGODB_RETRY_SECONDS = 2.0
_M_ARENA_MAX = -8  # mallopt's parameter number


def run_worker(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM. Kafka and MongoDB come from the settings."""
    _bound_malloc_arenas()
    store = BatchStore.from_settings(settings)
    _indexes_once_mongodb_is_up(store, settings.worker_retry_seconds)
    worker = StreamWorker(settings, store, AvroCodec())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.on_signal)
    # The loop runs in a thread of its own: a librdkafka call blocks for up to its timeout,
    # and Python runs a signal handler only in the main thread, between two of its steps.
    # Here the main thread only waits, so a SIGTERM is heard at once (and its deadline
    # armed) even while the loop sits in a transaction to a gone broker.
    loop = threading.Thread(target=worker.run, name="stream-worker")
    loop.start()
    try:
        while loop.is_alive():
            loop.join(0.2)
    finally:
        close_within(store.close, _CLOSE_SECONDS, "mongodb")
    if worker.error is not None:
        # Stopped by a failure that did not pass: exit non-zero so it is restarted.
        raise SystemExit(EXIT_HANDLER_FAILED)


class StreamWorker:
    """One worker: its partitions' states, the consumer, the web server, the coordinator.

    Args:
        settings: ``CLICKSTREAM_*``.
        store: the MongoDB batches.
        codec: the shared Avro codec.
    """

    def __init__(self, settings: Settings, store: BatchStore, codec: AvroCodec) -> None:
        self._settings = settings
        self._codec = codec
        names = Topics(settings.topic_prefix)
        self._changelog = names.state_changelog
        self._lock = threading.RLock()
        self._states: dict[int, PartitionState] = {}
        self._writers: dict[int, changelog.PartitionWriter] = {}
        self._stopping = threading.Event()
        self._joined = False
        self._restoring = False
        self._lags: dict[tuple[str, int], int] = {}
        self.error: BaseException | None = None
        self._bounded = CallWatchdog(_STUCK_SECONDS, self.stop)
        changelog.ensure_changelog(settings, self._changelog)
        self._local = (
            LocalStore(
                settings.data_dir / f"worker-{settings.worker_instance_id}" / "state",
                block_cache_bytes=settings.worker_rocksdb_block_cache_bytes,
                write_buffer_bytes=settings.worker_rocksdb_write_buffer_bytes,
                max_open_files=settings.worker_rocksdb_max_open_files,
            )
            if settings.worker_store == "rocksdb"
            else None
        )
        parts = PartWriter(store, codec, names, settings.topic_partitions)
        control, erasures = ControlAuth.from_settings(settings), ErasureStore(store)
        self._handlers = Handlers(
            settings,
            names,
            codec,
            control,
            parts,
            store,
            Forgetting(codec, names, control, erasures),
        )
        web_url = f"http://{settings.worker_web_host}:{settings.worker_port}"
        self._web = WorkerWeb(
            settings,
            self._read_session,
            self._is_ready,
            lambda: sorted(self._states),
            Owners(settings, names.stream_app_id, names.sessions),
            metrics.registry(self._note),
        )
        self._web.start()  # first: a port already taken is the error to see
        self._group = names.stream_app_id
        self._source = SourceConsumer(settings, names, web_url, self._assigned, self._revoked)
        self._processor = Processor(
            codec,
            names,
            self._handlers,
            self._source,
            self._states,
            self._writers,
            self._lock,
            settings.worker_retry_seconds,
            settings.worker_commit_interval_seconds,
            settings.worker_batch_max_messages,
            self.stop,
            give_back_memory,
        )
        self._coordinator = ReleaseCoordinator(
            settings, store, erasures, codec, lambda: 0 in self._states, self.stop
        )

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        self._coordinator.start()
        max_messages = self._settings.worker_batch_max_messages
        noted = 0.0
        try:
            while not self._stopping.is_set():
                due = self._processor.next_commit_in()
                wait = _POLL_SECONDS if due is None else min(due, _POLL_SECONDS)
                messages = self._source.poll(max_messages, wait)
                if messages:
                    self._processor.process(messages)
                else:
                    self._processor.commit_due()
                if time.monotonic() - noted >= _LAGS_SECONDS:
                    noted = time.monotonic()
                    self._lags = self._source.lags()  # the consumer's, read on its thread
        finally:
            self._close()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("worker stopping signal=%s", signal.Signals(signum).name)
        _exit_after(_STOP_DEADLINE_SECONDS)
        self._stopping.set()

    def stop(self, error: BaseException, where: str) -> None:
        """Stop because of ``error`` (exit code 3: restart me)."""
        if self.error is None:
            self.error = error
            logger.critical(
                "worker stopping: %s could not be handled error=%r; it will be handled again "
                "when the worker restarts",
                where,
                error,
            )
        _exit_after(_STOP_DEADLINE_SECONDS, EXIT_HANDLER_FAILED)
        self._stopping.set()

    def _close(self) -> None:
        self._processor.commit(sorted(self._states))  # what was handled, while it can
        self._coordinator.stop(timeout=_CLOSE_SECONDS)
        member = self._source.member_id()
        close_within(self._source.close, _CLOSE_SECONDS, "consumer")
        if member is None:
            logger.warning("consumer group not left: the consumer holds no member id")
        else:
            group.leave(self._settings, self._group, member, _LEAVE_SECONDS)
        self._revoked(sorted(self._states))
        if self._local is not None:
            self._local.close()
        self._web.stop()
        logger.info("worker stopped")

    # -- partitions ---------------------------------------------------------------------

    def _backend(self, partition: int) -> Backend:
        if self._local is None:
            return MemoryPartition(partition)
        return self._local.partition(partition, changelog.DELETE_RETENTION_MS // 2)

    def _assigned(self, partitions: list[int]) -> dict[int, StartAt]:
        """Set up each partition: fence its previous owner, restore its state; where to
        read it from."""
        self._restoring = True
        starts = {}
        try:
            for partition in partitions:
                state = self._take(partition)
                offsets = state.offsets()
                starts[partition] = (
                    StartAt(offsets["sessions_offset"], offsets["events_offset"])
                    if offsets
                    else StartAt(None, None)
                )
        finally:
            self._restoring = False
        self._joined = True
        return starts

    def _take(self, partition: int) -> PartitionState:
        while True:
            try:
                writer = changelog.PartitionWriter(
                    self._settings, self._changelog, partition, self._bounded
                )
                backend = self._backend(partition)
                read, took_ms = changelog.restore(
                    self._settings, self._codec, self._changelog, backend
                )
                break
            except Exception as exc:  # noqa: BLE001 - the broker away: try again
                if self._stopping.is_set():
                    raise
                logger.warning(
                    "partition not restored, retrying partition=%s error=%r", partition, exc
                )
                time.sleep(_RESTORE_RETRY_SECONDS)
        state = PartitionState(backend)
        with self._lock:
            self._states[partition] = state
            self._writers[partition] = writer
        logger.info(
            "partition restored partition=%s records=%s ms=%s sessions=%s",
            partition,
            read,
            took_ms,
            backend.entry_count,
        )
        return state

    def _revoked(self, partitions: list[int]) -> None:
        self._processor.commit(partitions)  # what was handled counts, if it still can
        with self._lock:
            for partition in partitions:
                writer = self._writers.pop(partition, None)
                state = self._states.pop(partition, None)
                if writer is not None:
                    writer.close()
                if state is not None:
                    state.backend.close()
        self._processor.forget(partitions)

    # -- the web server's view ----------------------------------------------------------

    def _note(self) -> tuple[dict[tuple[str, int], int], int]:
        """The lags as last read, and the sessions held now (for the metrics)."""
        with self._lock:
            sessions = sum(state.backend.entry_count for state in self._states.values())
        return self._lags, sessions

    def _is_ready(self) -> bool:
        return self._joined and not self._restoring and not self._stopping.is_set()

    def _read_session(self, session_id: str, partition: int, events_limit: int) -> Any:
        with self._lock:
            state = self._states.get(partition)
            if state is None:
                return WorkerWeb.NOT_MINE
            found = read_session(state.backend, session_id, events_limit)
            if found is not None:
                return found
            # A producer that partitions otherwise than Java's murmur2 (the contract) put
            # the session elsewhere: any partition held here may have it.
            for other in self._states.values():
                if other is not state:
                    found = read_session(other.backend, session_id, events_limit)
                    if found is not None:
                        return found
            return None


def _indexes_once_mongodb_is_up(store: BatchStore, wait_seconds: float) -> None:
    """Make sure of the indexes, waiting up to ``wait_seconds`` for MongoDB: a worker started
    beside a replica set still being initiated (a fresh cluster) waits for its primary
    instead of crash-looping. Each try itself waits for a server (server selection)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            store.ensure_indexes()
            ErasureStore(store).ensure_indexes()
            BatchExpiry(store).ensure_indexes()
        except PyMongoError as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("waiting for MongoDB (a writable primary) error=%s", exc)
            time.sleep(_MONGODB_RETRY_SECONDS)
        else:
            return


def _bound_malloc_arenas() -> None:
    """glibc gives each thread that allocates an arena of its own (64 MB of address space,
    much of it kept once touched); librdkafka's and RocksDB's threads are many. Two arenas
    keep the worker's memory near what it holds (as MALLOC_ARENA_MAX=2 would, set before
    any thread starts)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)


def give_back_memory() -> None:
    """Hand the heap's free pages back to the system (after a large batch)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _exit_after(seconds: float, code: int = 1) -> None:
    def give_up() -> None:
        logger.error("worker did not stop in time, exiting seconds=%s", seconds)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()

"""Handling messages in batches, partition by partition, each partition's batch committed
in one Kafka transaction with the state it led to; and, for each failure, retry or
dead-letter.

A partition's batch stays open for ``CLICKSTREAM_WORKER_COMMIT_INTERVAL_SECONDS`` (or
``CLICKSTREAM_WORKER_BATCH_MAX_MESSAGES`` messages) across polls: a transaction costs a
few requests to the broker whatever it holds, so at a low rate it is paid once per
interval, not once per message (Kafka Streams commits every 100 ms under exactly-once).
The state the worker serves is the committed one: a click shows within the interval.

- A failure of a server (MongoDB or Kafka away, a transaction that did not commit) drops
  the partition's staged changes, rewinds it to where its committed state ends and reads it
  again after a backoff (up to 10 s apart): nothing is skipped. Past
  ``CLICKSTREAM_WORKER_RETRY_SECONDS`` of failing, the worker stops with one ``CRITICAL``
  line and exit code 3, and its restart picks up from the same place.
- A failure of the message's own (its content makes a handler fail) is given one more try
  from the committed state; failing again, the message is dead-lettered with the error
  (``handling_failed``) and the stream goes on. No message stops the pipeline for good.

Other partitions of the batch go on either way: they are independent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from stream_app import metrics
from stream_app.changelog import encode_changes
from stream_app.source import StartAt, by_partition

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from confluent_kafka import Message

    from schemas import AvroCodec, Topics
    from stream_app.changelog import PartitionWriter
    from stream_app.handlers import Handlers
    from stream_app.outgoing import Outgoing
    from stream_app.source import SourceConsumer
    from stream_app.state.partition import PartitionState

logger = logging.getLogger(__name__)

# The exit code of a worker stopped by a message it could not handle.
EXIT_HANDLER_FAILED = 3
_BACKOFF_FIRST_SECONDS = 0.1
# A partition's batch is committed once it has staged this many changes, whatever the
# interval: a message of a gateway's group holds hundreds of sessions. Every partition of a
# poll may hold this many at once: it bounds the worker's memory while it catches up.
_MAX_STAGED = 5_000
_BACKOFF_MAX_SECONDS = 10.0
# Labels error codes MongoDB gives when it is the server's trouble, not the document's.
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "NoWritesPerformed")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a server's trouble (retry, never skip), not the message's."""
    if isinstance(error, KafkaException | TimeoutError | ConnectionError):
        return True
    if isinstance(error, ConnectionFailure | NotPrimaryError | WriteConcernError):
        return True
    if isinstance(error, ExecutionTimeout):
        return True
    if isinstance(error, PyMongoError):
        labelled = any(error.has_error_label(label) for label in _TRANSIENT_LABELS)
        if labelled or error.timeout:
            return True
        if isinstance(error, OperationFailure) and error.code in _SERVER_ERROR_CODES:
            return True
    return False


# ShutdownInProgress, InterruptedAtShutdown, PrimarySteppedDown, NotWritablePrimary, ...
_SERVER_ERROR_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


@dataclass(slots=True)
class _Open:
    """A partition's batch: handled, staged, not committed yet."""

    positions: dict[str, int | None]
    since: float
    out: list[Outgoing] = field(default_factory=list)
    kinds: list[tuple[str, str]] = field(default_factory=list)


class _Failing:
    """A partition that failed: since when, how many times, and which message once."""

    __slots__ = ("attempts", "since", "struck")

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.attempts = 0
        self.struck: tuple[str, int] | None = None


class Processor:
    """Handles batches for the partitions this worker holds.

    Args:
        codec: encodes the state's values.
        names: topic names.
        handlers: what each message does.
        source: the consumer (rewinds and backoffs).
        states: the state of each partition held.
        writers: the transactional writer of each partition held.
        lock: held while committed state changes (readers of the state hold it too).
        retry_seconds: ``CLICKSTREAM_WORKER_RETRY_SECONDS``.
        commit_interval: ``CLICKSTREAM_WORKER_COMMIT_INTERVAL_SECONDS``.
        max_messages: ``CLICKSTREAM_WORKER_BATCH_MAX_MESSAGES``.
        stop: stops the worker (failure, where).
        after_large_batch: called after a batch cut short by its size (memory handed back).
    """

    def __init__(
        self,
        codec: AvroCodec,
        names: Topics,
        handlers: Handlers,
        source: SourceConsumer,
        states: dict[int, PartitionState],
        writers: dict[int, PartitionWriter],
        lock: threading.RLock,
        retry_seconds: float,
        commit_interval: float,
        max_messages: int,
        stop: Callable[[BaseException, str], None],
        after_large_batch: Callable[[], None] = lambda: None,
    ) -> None:
        self._codec = codec
        self._names = names
        self._handlers = handlers
        self._source = source
        self._states = states
        self._writers = writers
        self._lock = lock
        self._retry_seconds = retry_seconds
        self._stop = stop
        self._after_large_batch = after_large_batch
        self._commit_interval = commit_interval
        self._max_messages = max_messages
        self._failing: dict[int, _Failing] = {}
        self._open: dict[int, _Open] = {}

    def process(self, messages: list[Message]) -> None:
        """Handle ``messages``; commit the partitions whose batch is due."""
        for partition, group in by_partition(messages).items():
            state = self._states.get(partition)
            if state is not None:  # not revoked meanwhile
                self._partition(state, group)
        self.commit_due()

    def commit_due(self) -> None:
        """Commit every open batch that is old or large enough."""
        now = time.monotonic()
        for partition, batch in list(self._open.items()):
            if now - batch.since >= self._commit_interval or len(batch.kinds) >= self._max_messages:
                self._commit(self._states[partition], batch)

    def commit(self, partitions: list[int]) -> None:
        """Commit the open batches of ``partitions`` now (they are about to be given up)."""
        for partition in partitions:
            batch = self._open.get(partition)
            state = self._states.get(partition)
            if batch is not None and state is not None:
                self._commit(state, batch)

    def next_commit_in(self) -> float | None:
        """Seconds until the oldest open batch is due; None if none is open."""
        if not self._open:
            return None
        oldest = min(batch.since for batch in self._open.values())
        return max(oldest + self._commit_interval - time.monotonic(), 0.0)

    def forget(self, partitions: list[int]) -> None:
        for partition in partitions:
            self._failing.pop(partition, None)
            self._open.pop(partition, None)

    def _start(self, state: PartitionState) -> StartAt:
        offsets = state.offsets()
        if offsets is None:
            return StartAt(None, None)
        return StartAt(offsets["sessions_offset"], offsets["events_offset"])

    def _partition(self, state: PartitionState, messages: list[Message]) -> None:
        partition = state.partition
        batch = self._open.get(partition)
        if batch is None:
            start = self._start(state)  # nothing staged: where the committed state ends
            positions = {self._names.sessions: start.sessions, self._names.events: start.events}
            batch = self._open[partition] = _Open(positions, time.monotonic())
        positions, out, kinds = batch.positions, batch.out, batch.kinds
        failing = self._failing.get(partition)
        for message in messages:
            topic, offset = message.topic() or "", message.offset() or 0
            position = positions.get(topic)
            if position is not None and offset < position:
                continue  # handled and committed already (read again after a rewind)
            try:
                kind = self._handlers.handle(state, message, out)
            except Exception as exc:  # noqa: BLE001 - each failure is sorted below
                if not is_transient(exc) and failing and failing.struck == (topic, offset):
                    logger.error(
                        "message failed twice, dead-lettered topic=%s partition=%s offset=%s "
                        "error=%r",
                        topic,
                        partition,
                        offset,
                        exc,
                    )
                    self._handlers.dead_letter_failed(message, exc, out)
                    kind = "failed"
                else:
                    self._failed(
                        state,
                        exc,
                        f"topic={topic} partition={partition} offset={offset}",
                        struck=None if is_transient(exc) else (topic, offset),
                    )
                    return
            positions[topic] = offset + 1
            kinds.append((topic, kind))
            if state.staged_count >= _MAX_STAGED:
                # A backlog of grouped messages: commit as it goes, memory stays bounded.
                if not self._commit(state, batch):  # rewound: read again later
                    return
                self._after_large_batch()
                batch = self._open[partition] = _Open(dict(positions), time.monotonic())
                positions, out, kinds = batch.positions, batch.out, batch.kinds

    def _commit(self, state: PartitionState, batch: _Open) -> bool:
        """Commit a partition's batch; False if it failed (dropped, the partition rewound)."""
        partition = state.partition
        del self._open[partition]
        positions, out, kinds = batch.positions, batch.out, batch.kinds
        sessions, events = positions[self._names.sessions], positions[self._names.events]
        state.put_offsets({"sessions_offset": sessions or 0, "events_offset": events or 0})
        try:
            records = encode_changes(self._codec, state.staged())
            position = self._writers[partition].commit(records, out)
        except Exception as exc:  # noqa: BLE001 - retried, whatever it was
            self._failed(state, exc, f"commit partition={partition}", struck=None)
            return False
        with self._lock:
            state.committed(position)
        self._failing.pop(partition, None)
        self._source.commit({partition: StartAt(sessions, events)})
        metrics.handled(kinds, out)
        return True

    def _failed(
        self,
        state: PartitionState,
        error: BaseException,
        where: str,
        struck: tuple[str, int] | None,
    ) -> None:
        """Drop what the partition staged and read it again from its committed state:
        at once the first time a message fails of its own, after a backoff otherwise."""
        partition = state.partition
        state.drop_staged()
        self._open.pop(partition, None)
        failing = self._failing.setdefault(partition, _Failing())
        failing.attempts += 1
        metrics.HANDLER_RETRIES.inc()
        start = self._start(state)
        if struck is not None and failing.struck != struck:
            failing.struck = struck
            logger.warning("handling failed, trying once more %s error=%r", where, error)
            self._source.rewind(partition, start)
            return
        if time.monotonic() - failing.since > self._retry_seconds:
            self._stop(error, where)
            return
        backoff = min(_BACKOFF_FIRST_SECONDS * 2 ** (failing.attempts - 1), _BACKOFF_MAX_SECONDS)
        logger.warning(
            "handling failed, retrying %s attempt=%s wait_s=%.2f error=%r",
            where,
            failing.attempts,
            backoff,
            error,
        )
        self._source.pause_for(partition, backoff, start)

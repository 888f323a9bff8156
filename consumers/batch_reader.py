"""For fine-tuning jobs: learn of each released batch from the batch topic, then read its
sessions with their events from MongoDB, in order, in bounded memory. For operators that
release by message: wait for the answer to a release on the batch topic."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self, TypedDict, TypeGuard, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from batches.store import Batch, BatchStore, parse_batch_id
from clickstream.settings import Settings, get_settings
from consumers.exceptions import InvalidBatchIdError, ReleaseWaitTimeoutError
from schemas import AvroCodec, MalformedMessageError, SchemaName, Topics

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator
    from types import TracebackType

    from confluent_kafka import Message

    from batches.public import PublicBatchSession
    from schemas.records import BatchReleased, ReleaseOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReleasedBatch:
    """A BatchReleased message: the batch is complete and can start a fine-tuning run."""

    batch_id: str
    release_id: str
    session_count: int
    event_count: int
    repeat_session_count: int
    requested_at_ms: int
    released_at_ms: int
    content_digest: str | None = None
    """SHA-256 of the batch as written (``batches.digest``); reading it checks it."""


class PublicReleaseAnswer(TypedDict):
    """A :class:`ReleaseAnswer` as the command line and the API show it."""

    status: str
    batch_id: str | None
    release_id: str
    request_ids: list[str]
    session_count: int
    event_count: int
    repeat_session_count: int
    requested_at: int
    answered_at: int
    unreleasable_session_ids: list[str]


@dataclass(frozen=True, slots=True)
class ReleaseAnswer:
    """What became of a release: a batch (``released``) or nothing to release."""

    released: bool
    batch_id: str | None
    """The batch; None when there was nothing to release."""
    release_id: str
    request_ids: tuple[str, ...]
    """The requests it answers (empty for a batch announced before ReleaseOutcome existed)."""
    session_count: int
    event_count: int
    repeat_session_count: int
    requested_at_ms: int
    answered_at_ms: int
    unreleasable_session_ids: tuple[str, ...] = ()
    """Sessions MongoDB refused to store: not in the batch (dead-lettered, with the reason)."""

    def public(self) -> PublicReleaseAnswer:
        return {
            "status": "released" if self.released else "empty",
            "batch_id": self.batch_id,
            "release_id": self.release_id,
            "request_ids": list(self.request_ids),
            "session_count": self.session_count,
            "event_count": self.event_count,
            "repeat_session_count": self.repeat_session_count,
            "requested_at": self.requested_at_ms // 1000,
            "answered_at": self.answered_at_ms // 1000,
            "unreleasable_session_ids": list(self.unreleasable_session_ids),
        }


class BatchReader:
    """Follows the batch topic and reads batches.

    Args:
        settings: default ``get_settings()`` (Kafka, MongoDB and topic prefix).
        group_id: the job's consumer group: :meth:`follow` resumes after the last batch
            this group finished. Jobs with different algorithms use different groups.
    """

    def __init__(self, settings: Settings | None = None, *, group_id: str = "fine-tuning") -> None:
        self._settings = settings or get_settings()
        self._store_: BatchStore | None = None
        self._topics = Topics(self._settings.topic_prefix)
        self._group_id = group_id
        self._avro = AvroCodec()

    def follow(
        self, idle_timeout: float | None = None, stop: threading.Event | None = None
    ) -> Iterator[ReleasedBatch]:
        """Each released batch, once per group, in release order.

        A batch counts as done for the group when the caller asks for the next one, so a
        job that dies mid-batch gets that batch again. With ``idle_timeout``, stops after
        that many seconds without a new batch; with ``stop``, within half a second of it
        being set; otherwise follows forever.
        """
        consumer = Consumer(
            {
                **self._settings.kafka_common_config(),
                "group.id": self._group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Announcements are written in transactions: never show an aborted one.
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([self._topics.batches])
        quiet = _QuietPoll(consumer)
        last_message_at = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                message = quiet.poll(0.5)
                if not _has_record(message):
                    if (
                        idle_timeout is not None
                        and time.monotonic() - last_message_at > idle_timeout
                    ):
                        return
                    continue
                last_message_at = time.monotonic()
                try:
                    decoded = self._avro.decode(message.value() or b"")
                except MalformedMessageError as exc:
                    logger.warning("undecodable message on the batch topic skipped error=%s", exc)
                    continue
                # One per batch; ReleaseOutcome is for requesters.
                if decoded.name == SchemaName.BATCH_RELEASED:
                    batch = cast("BatchReleased", decoded.record)
                    yield ReleasedBatch(
                        batch_id=batch["batch_id"],
                        release_id=batch["release_id"],
                        session_count=batch["session_count"],
                        event_count=batch["event_count"],
                        repeat_session_count=batch["repeat_session_count"],
                        requested_at_ms=batch["requested_at_ms"],
                        released_at_ms=batch["released_at_ms"],
                        content_digest=batch["content_digest"],
                    )
                    consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def wait_for_release(
        self, release_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> ReleaseAnswer:
        """The answer to a release, read on the batch topic from its beginning: the batch of
        ``release_id`` once it is complete, or "nothing to release".

        A release_id that found nothing to release stays free, so an empty answer counts
        only if it answers ``request_id`` (from ``ClickstreamProducer.request_release``)
        or, without one, if it was written after this call began. Raises
        :class:`ReleaseWaitTimeoutError` after ``timeout`` seconds without an answer.
        """
        topic = TopicPartition(self._topics.batches, 0)
        consumer = Consumer(
            {
                **self._settings.kafka_common_config(),
                "group.id": f"release-waiter-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _, end_at_start = consumer.get_watermark_offsets(topic, timeout=30)
            consumer.assign([TopicPartition(topic.topic, 0, OFFSET_BEGINNING)])
            quiet = _QuietPoll(consumer)
            while deadline is None or time.monotonic() < deadline:
                message = quiet.poll(0.5)
                if not _has_record(message):
                    continue
                try:
                    decoded = self._avro.decode(message.value() or b"")
                except MalformedMessageError as exc:
                    logger.warning("undecodable message on the batch topic skipped error=%s", exc)
                    continue
                record = decoded.record
                if record.get("release_id") != release_id:
                    continue
                if decoded.name == SchemaName.RELEASE_OUTCOME:
                    outcome = cast("ReleaseOutcome", record)
                    released = outcome["status"] == "RELEASED"
                    answers_request = (
                        request_id in outcome["request_ids"]
                        if request_id is not None
                        else (message.offset() or 0) >= end_at_start
                    )
                    if released or answers_request:
                        return _answer(
                            outcome,
                            released=released,
                            request_ids=tuple(outcome["request_ids"]),
                            answered_at_ms=outcome["answered_at_ms"],
                            unreleasable=tuple(outcome.get("unreleasable_session_ids", ())),
                        )
                elif decoded.name == SchemaName.BATCH_RELEASED:  # from before ReleaseOutcome
                    batch = cast("BatchReleased", record)
                    return _answer(
                        batch, released=True, request_ids=(), answered_at_ms=batch["released_at_ms"]
                    )
        finally:
            consumer.close()
        raise ReleaseWaitTimeoutError(
            f"no answer to release {release_id} within {timeout} s; it goes on: wait again"
        )

    @property
    def store(self) -> BatchStore:
        """The batches in MongoDB, connected on first use: waiting for a release needs only
        Kafka."""
        if self._store_ is None:
            self._store_ = BatchStore.from_settings(self._settings)
        return self._store_

    def batch(self, batch_id: str) -> Batch | None:
        """The batch's status and counts; None if there is no such batch."""
        object_id = parse_batch_id(batch_id)
        return self.store.get(object_id) if object_id else None

    def sessions(self, batch_id: str, page_size: int = 500) -> Iterator[PublicBatchSession]:
        """Every session of the batch with all its events (in the order they arrived), by
        ``session_number``; at most ``page_size`` sessions are held at a time.

        The bytes read are checked against the batch's content digest: once the last
        session is read, :class:`batches.exceptions.BatchContentMismatchError` if they
        differ from what was written (so train on them only once the iteration ended).
        """
        object_id = parse_batch_id(batch_id)
        if object_id is None:
            raise InvalidBatchIdError(f"not a batch id: {batch_id!r}")
        return self.store.iter_sessions(object_id, page_size)

    def close(self) -> None:
        if self._store_ is not None:
            self._store_.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _answer(
    record: ReleaseOutcome | BatchReleased,
    *,
    released: bool,
    request_ids: tuple[str, ...],
    answered_at_ms: int,
    unreleasable: tuple[str, ...] = (),
) -> ReleaseAnswer:
    """A ReleaseOutcome's answer, or a BatchReleased's (from before ReleaseOutcome existed:
    it answers no request, at the time the batch was released)."""
    return ReleaseAnswer(
        released=released,
        batch_id=record["batch_id"] if released else None,
        release_id=record["release_id"],
        request_ids=request_ids,
        session_count=record["session_count"],
        event_count=record["event_count"],
        repeat_session_count=record["repeat_session_count"],
        requested_at_ms=record["requested_at_ms"],
        answered_at_ms=answered_at_ms,
        unreleasable_session_ids=unreleasable,
    )


class _QuietPoll:
    """Polls a consumer, its partitions paused while nothing new comes.

    A broker that answers an empty fetch at once (the local one) would make a waiting
    reader fetch without pause (0.8 cores beside ``make run``): after a second without a
    message the partitions are paused, and their end offsets looked at every
    ``look_seconds``; a partition with something past the reader's position is resumed
    there.
    """

    def __init__(self, consumer: Consumer, look_seconds: float = 0.5) -> None:
        self._consumer = consumer
        self._look = look_seconds
        self._paused: list[TopicPartition] = []
        self._next: dict[tuple[str, int], int] = {}
        self._last_message = self._last_look = time.monotonic()

    def poll(self, timeout: float) -> Message | None:
        if self._paused:
            message = self._consumer.poll(min(timeout, self._look))  # callbacks, heartbeats
            if time.monotonic() - self._last_look >= self._look:
                self._wake_if_new()
            return message
        message = self._consumer.poll(timeout)
        now = time.monotonic()
        if message is not None and message.error() is None:
            self._last_message = now
            self._next[(message.topic() or "", message.partition() or 0)] = (
                message.offset() or 0
            ) + 1
        elif now - self._last_message > _QUIET_AFTER_SECONDS:
            self._paused = self._consumer.assignment()
            if self._paused:
                self._consumer.pause(self._paused)
                self._last_look = now
        return message

    def _wake_if_new(self) -> None:
        self._last_look = time.monotonic()
        paused = [TopicPartition(tp.topic, tp.partition) for tp in self._paused]
        try:
            ends = self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, -1) for tp in paused], timeout=5
            )
            positions = self._consumer.position(paused)
        except KafkaException:
            ends, positions = [], []
        at = {(tp.topic, tp.partition): tp.offset for tp in positions if tp.offset >= 0}
        at.update(self._next)
        if ends and all(e.offset <= at.get((e.topic, e.partition), -1) for e in ends):
            return
        self._paused = []
        try:
            self._consumer.resume(paused)
            for tp in paused:  # fetch at once, from where the reader is
                offset = at.get((tp.topic, tp.partition))
                if offset is not None:
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:  # assignment changed meanwhile
            logger.debug("batch topic resume error=%s", exc)
        self._last_message = time.monotonic()


_QUIET_AFTER_SECONDS = 1.0


def _has_record(message: Message | None) -> TypeGuard[Message]:
    """Whether a poll brought a record. An error the client recovers from itself is logged;
    a fatal one raises."""
    if message is None:
        return False
    error = message.error()
    if error is None:
        return True
    if error.fatal():
        raise KafkaException(error)
    logger.warning("batch topic consume error=%s", error)
    return False

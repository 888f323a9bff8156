"""Reading the sessions and events topics in batches, as one consumer group of workers.

The two topics are co-partitioned by session id, and the range assignor gives a worker
the same partition numbers of both, so one worker holds everything of a session. Where
to start in a partition is not the group's committed offset but the position recorded in
the partition's state (see ``changelog``): the worker that gets a partition restores its
state first, then reads from exactly where that state ends. Offsets are committed to the
group too, after each batch, for lag monitoring only; where the settings ask for it, what
lies below them is deleted from the topics (``source_purge``).

Static membership (``CLICKSTREAM_WORKER_ID`` as ``group.instance.id``) gives a restarted
worker its partitions back without a rebalance; a clean stop leaves the group at once.

A broker that answers an empty fetch at once instead of holding it (the local one does)
would make a caught-up consumer fetch without pause, costing the consumer and the broker
most of a core each. So after a read that left nothing buffered, the partitions are paused
for ``CLICKSTREAM_WORKER_FETCH_PAUSE_SECONDS`` (one fetch then brings what came meanwhile),
and when nothing came for a while they stay paused, their end offsets looked at every
``CLICKSTREAM_WORKER_IDLE_POLL_SECONDS``: a partition with something new is resumed.
librdkafka does not wake its broker thread on a resume (it sleeps up to a second when
nothing is fetchable), so every resume is followed by a request to the partitions' leaders,
whose sending wakes it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from stream_app.source_purge import SourcePurge

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from confluent_kafka import Message

    from clickstream.settings import Settings
    from schemas import Topics

logger = logging.getLogger(__name__)

_OFFSETS_TIMEOUT = 5.0
# Quiet this long after a message, the partitions are paused (until then the consumer
# fetches without pause against the local broker: a tick every 30 s woke the idle worker
# into that for a second). Woken, they stay resumed until something is read, or this long
# at most (a pause before the first fetch came back would discard it).
_IDLE_AFTER_SECONDS = 0.25
_AWAKE_FOR_FIRST_READ_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where to read a partition from, on each of the two topics (None: the beginning)."""

    sessions: int | None
    events: int | None


class SourceConsumer:
    """The batch consumer of the sessions and events topics.

    Args:
        settings: Kafka, group and timeouts.
        topics: the topic names.
        web_url: where this worker serves sessions (in its client id, so others find it).
        on_assigned: called with the partition numbers given to this worker, before they
            are read; returns where to read each one from.
        on_revoked: called with the partition numbers taken away (or lost).
    """

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        web_url: str,
        on_assigned: Callable[[list[int]], dict[int, StartAt]],
        on_revoked: Callable[[list[int]], None],
    ) -> None:
        self.sessions_topic = topics.sessions
        self.events_topic = topics.events
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        session_timeout_ms = int(settings.worker_session_timeout_seconds * 1000)
        self._consumer = Consumer(
            {
                **settings.kafka_common_config(),
                "group.id": topics.stream_app_id,
                "group.instance.id": settings.worker_instance_id,
                "client.id": client_id(web_url),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # The same partition numbers of both topics to the same worker.
                "partition.assignment.strategy": "range",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(session_timeout_ms // 5, 100),
                # Restoring a partition's state happens in the assignment callback.
                "max.poll.interval.ms": int(settings.worker_rebalance_timeout_seconds * 1000)
                + 600_000,
                # What is prefetched stays bounded, whatever the message sizes: the queue,
                # and each fetch response (buffered whole before it is queued).
                "queued.max.messages.kbytes": 16 * 1024,
                "fetch.max.bytes": 8 * 1024 * 1024,
            }
        )
        self._purge = SourcePurge(settings)
        self._idle_seconds = settings.worker_idle_poll_seconds
        self._fetch_pause = settings.worker_fetch_pause_seconds
        # Paused after a read that caught up, until then: resumed on the first poll after.
        self._pacing_until = 0.0
        self._assigned: set[int] = set()
        # The next offset to read, per (topic, partition): to resume a paused one there.
        self._next: dict[tuple[str, int], int] = {}
        self._paused_until: dict[int, float] = {}
        self._idle = False
        self._last_look = 0.0
        self._last_message = time.monotonic()
        # Nothing read since the partitions were assigned or resumed: stay awake longer.
        self._waiting_first_read = True
        self._consumer.subscribe(
            [self.sessions_topic, self.events_topic],
            on_assign=self._assign,
            on_revoke=self._revoke,
            on_lost=self._revoke,
        )

    @property
    def assigned(self) -> frozenset[int]:
        return frozenset(self._assigned)

    # -- the group ----------------------------------------------------------------------

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        starts = self._on_assigned(numbers)
        placed = []
        for tp in partitions:
            start = starts[tp.partition]
            offset = start.sessions if tp.topic == self.sessions_topic else start.events
            if offset is None:
                offset = self._first_offset(tp)
            placed.append(TopicPartition(tp.topic, tp.partition, offset))
        consumer.assign(placed)
        self._next = {(tp.topic, tp.partition): tp.offset for tp in placed if tp.offset >= 0}
        self._assigned = set(numbers)
        self._paused_until.clear()
        self._idle = False
        self._pacing_until = 0.0
        self._last_message = time.monotonic()
        self._waiting_first_read = True
        logger.info("partitions assigned partitions=%s", ",".join(map(str, numbers)))

    def _first_offset(self, tp: TopicPartition) -> int:
        """Where a partition never read begins (a concrete offset, so a paused partition
        can be resumed there)."""
        try:
            low, _ = self._consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=_OFFSETS_TIMEOUT
            )
        except KafkaException:
            return OFFSET_BEGINNING
        return int(low) if low is not None and low >= 0 else OFFSET_BEGINNING

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        self._assigned -= set(numbers)
        for number in numbers:
            self._paused_until.pop(number, None)
            for topic in (self.sessions_topic, self.events_topic):
                self._purge.forget(topic, number)
        logger.info("partitions revoked partitions=%s", ",".join(map(str, numbers)))
        self._on_revoked(numbers)
        consumer.unassign()

    # -- reading ------------------------------------------------------------------------

    def _pairs(self, numbers: Iterable[int]) -> list[TopicPartition]:
        return [
            TopicPartition(topic, number)
            for number in numbers
            for topic in (self.sessions_topic, self.events_topic)
        ]

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """The messages there are (up to ``max_messages``), waiting up to ``timeout`` for
        the first; errors the client recovers from are logged and left out."""
        self._resume_when_due()
        self._purge.run_if_due()
        if self._pacing_until:
            left = self._pacing_until - time.monotonic()
            if left >= timeout:
                time.sleep(timeout)
                return []
            time.sleep(max(left, 0.0))
            self._end_pacing()
        if self._idle:
            messages = self._read(max_messages, min(timeout, self._idle_seconds))
            if not messages and time.monotonic() - self._last_look >= self._idle_seconds:
                self._wake_if_new()
        else:
            messages = self._read(max_messages, timeout)
            if messages:
                self._last_message = time.monotonic()
                self._waiting_first_read = False
                if self._fetch_pause > 0 and len(messages) < max_messages:
                    self._start_pacing()
            elif (
                self._idle_seconds > 0
                and self._assigned
                and time.monotonic() - self._last_message
                >= (
                    _AWAKE_FOR_FIRST_READ_SECONDS
                    if self._waiting_first_read
                    else _IDLE_AFTER_SECONDS
                )
            ):
                self._go_idle()
        records = _records(messages)
        for message in records:
            self._next[(message.topic() or "", message.partition() or 0)] = (
                message.offset() or 0
            ) + 1
        return records

    def _read(self, max_messages: int, timeout: float) -> list[Message]:
        """What is buffered now, or else the first message to come within ``timeout`` and
        what came with it (librdkafka's batch call waits for a full batch or the timeout)."""
        messages = self._consumer.consume(max_messages, timeout=0)
        if messages:
            return messages
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        return [first, *self._consumer.consume(max_messages - 1, timeout=0)]

    def _fetching(self) -> list[TopicPartition]:
        """The assigned partitions not paused for a failure."""
        return self._pairs(n for n in self._assigned if n not in self._paused_until)

    def _start_pacing(self) -> None:
        """Stop fetching for the fetch pause: what is buffered was all read."""
        self._consumer.pause(self._fetching())
        self._pacing_until = time.monotonic() + self._fetch_pause

    def _end_pacing(self) -> None:
        self._pacing_until = 0.0
        self._resume(self._fetching())

    def _resume(self, pairs: list[TopicPartition]) -> None:
        """Resume ``pairs`` and make librdkafka fetch them now: a request to their leaders
        wakes the broker threads, which a resume alone leaves asleep for up to a second."""
        if not pairs:
            return
        self._consumer.resume(pairs)
        try:
            self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, -1) for tp in pairs],
                timeout=_OFFSETS_TIMEOUT,
            )
        except KafkaException as exc:
            logger.debug("leaders not reached after a resume error=%s", exc)

    def _go_idle(self) -> None:
        self._consumer.pause(self._fetching())
        self._idle = True
        self._last_look = time.monotonic()

    def _wake_if_new(self) -> None:
        """Resume the paused partitions that have something past their position."""
        self._last_look = time.monotonic()
        waiting = self._fetching()
        if not waiting:
            return
        try:
            ends = self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, -1) for tp in waiting],
                timeout=_OFFSETS_TIMEOUT,
            )
        except KafkaException as exc:
            logger.debug("end offsets not read, resuming error=%s", exc)
            ends = []
        end_of = {(tp.topic, tp.partition): tp.offset for tp in ends}
        fresh = any(
            end_of.get((tp.topic, tp.partition), 1 << 62)
            > self._next.get((tp.topic, tp.partition), -1)
            for tp in waiting
        )
        if not fresh:
            return
        self._resume(waiting)
        self._idle = False
        self._last_message = time.monotonic()
        self._waiting_first_read = True

    def pause_for(self, partition: int, seconds: float, start: StartAt) -> None:
        """Stop reading ``partition`` for ``seconds`` (it failed), then read it again from
        ``start`` (where its committed state ends)."""
        self._consumer.pause(self._pairs([partition]))
        self._paused_until[partition] = time.monotonic() + seconds
        self.rewind(partition, start)

    def rewind(self, partition: int, start: StartAt) -> None:
        """Read ``partition`` again from ``start``: what was read past it is dropped."""
        for topic, offset in (
            (self.sessions_topic, start.sessions),
            (self.events_topic, start.events),
        ):
            target = TopicPartition(
                topic, partition, OFFSET_BEGINNING if offset is None else offset
            )
            if offset is None:
                self._next.pop((topic, partition), None)
            else:
                self._next[(topic, partition)] = offset
            self._seek(target)

    def _seek(self, target: TopicPartition) -> None:
        try:
            self._consumer.seek(target)
        except KafkaException as exc:
            logger.warning(
                "seek failed topic=%s partition=%s offset=%s error=%s",
                target.topic,
                target.partition,
                target.offset,
                exc,
            )

    def _resume_when_due(self) -> None:
        if not self._paused_until:
            return
        now = time.monotonic()
        due = [n for n, until in self._paused_until.items() if until <= now]
        for number in due:
            del self._paused_until[number]
        if due and not self._idle:
            self._resume(self._pairs(due))

    def commit(self, offsets: dict[int, StartAt]) -> None:
        """Tell the group where the partitions stand (for lag monitoring only), once their
        state up to there is committed; what lies below may then be deleted."""
        committed = [
            TopicPartition(topic, number, offset)
            for number, start in offsets.items()
            for topic, offset in (
                (self.sessions_topic, start.sessions),
                (self.events_topic, start.events),
            )
            if offset is not None
        ]
        if not committed:
            return
        for tp in committed:
            self._purge.note(tp.topic, tp.partition, tp.offset)
        try:
            self._consumer.commit(offsets=committed, asynchronous=True)
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: closed
            logger.debug("group offsets not committed error=%s", exc)

    def lags(self) -> dict[tuple[str, int], int]:
        """Per source topic partition: its end minus this worker's position (cached ends)."""
        found: dict[tuple[str, int], int] = {}
        pairs = self._pairs(self._assigned)
        try:
            positions = self._consumer.position(pairs)
        except KafkaException:
            return found
        for tp in positions:
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is None or high < 0 or tp.offset < 0:
                continue
            found[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        return found

    def member_id(self) -> str | None:
        """This consumer's member id in its group now (None before it joined)."""
        try:
            return self._consumer.memberid() or None
        except RuntimeError:  # closed
            return None

    def close(self) -> None:
        """Leave the group at once (a clean stop hands the partitions over)."""
        self._consumer.close()


def client_id(web_url: str) -> str:
    """A worker's Kafka client id: names its web address, for the others to route to it."""
    return f"clickstream-worker {web_url}"


def web_url_of(client: str) -> str | None:
    prefix = "clickstream-worker "
    return client[len(prefix) :] if client.startswith(prefix) else None


def _records(messages: list[Message]) -> list[Message]:
    found = []
    for message in messages:
        error = message.error()
        if error is None:
            found.append(message)
        elif error.fatal():
            raise KafkaException(error)
        elif error.code() != KafkaError._PARTITION_EOF:
            logger.warning("source consume error=%s", error)
    return found


def by_partition(messages: Iterable[Message]) -> dict[int, list[Message]]:
    grouped: dict[int, list[Message]] = defaultdict(list)
    for message in messages:
        grouped[message.partition() or 0].append(message)
    return grouped

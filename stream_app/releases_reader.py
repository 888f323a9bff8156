"""The release coordinator's reader of the releases topic (one partition)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

if TYPE_CHECKING:
    import threading

    from confluent_kafka import Consumer, Message

# How long a call of the coordinator's Kafka clients may take.
KAFKA_TIMEOUT = 30.0
# How long the releases topic's end offset may take to read before it is fetched anyway.
_END_OFFSET_TIMEOUT = 2.0
# The longest wait for the first message once the releases partition is assigned again.
_FIRST_FETCH_SECONDS = 1.0


class ReleasesReader:
    """The releases partition, assigned only while it holds something not yet read.

    librdkafka fetches without a pause while a partition is assigned, and a broker that
    answers an empty fetch at once (the local one ignores ``fetch.wait.max.ms``) turns that
    into a busy loop: idle, it cost 0.45 cores in the worker and 0.38 in the local broker,
    almost half of a 2-core machine. So the partition is assigned, at the next offset to
    read, when its end offset is past that one (or cannot be read), and given up again once
    a poll finds nothing. (Pausing it instead lost the messages fetched before the pause.)
    Only plain producers write the topic: its end offset is the end of its messages.
    """

    def __init__(self, consumer: Consumer, partition: TopicPartition, stopping: threading.Event):
        self.consumer = consumer
        self._partition = partition
        self._stopping = stopping
        self._next: int | None = None  # None: not known, read from the beginning
        self._assigned = False

    def rewind(self) -> None:
        """(Re)start at the committed offset: what an aborted transaction held is replayed."""
        if self._assigned:
            self.consumer.unassign()
            self._assigned = False
        (committed,) = self.consumer.committed([self._partition], KAFKA_TIMEOUT)
        self._next = committed.offset if committed.offset >= 0 else self._offsets()[0]

    def poll(self, timeout: float) -> list[Message]:
        """The messages there are (up to 100), waiting up to ``timeout`` for the first."""
        if not self._assigned:
            if self._next is not None and self._offsets()[1] <= self._next:
                self._stopping.wait(timeout)
                return []
            start = self._next if self._next is not None else OFFSET_BEGINNING
            self.consumer.assign([self._at(start)])
            self._assigned = True
            timeout = max(timeout, _FIRST_FETCH_SECONDS)
        first = self.consumer.poll(timeout)
        messages = [first, *self.consumer.consume(99, timeout=0)] if first else []
        for message in messages:
            if message.error() is None:
                self._next = (message.offset() or 0) + 1
        if not messages:
            self.consumer.unassign()
            self._assigned = False
        return messages

    def offsets(self) -> list[TopicPartition]:
        """Where to go on from, once what was polled is handled (to commit)."""
        return [self._at(self._next if self._next is not None else OFFSET_BEGINNING)]

    def _at(self, offset: int) -> TopicPartition:
        return TopicPartition(self._partition.topic, self._partition.partition, offset)

    def _offsets(self) -> tuple[int | None, float]:
        """The partition's first offset and end offset; (None, inf) if they cannot be read."""
        try:
            first, end = self.consumer.get_watermark_offsets(
                self._partition, timeout=_END_OFFSET_TIMEOUT, cached=False
            )
        except KafkaException:
            return None, float("inf")  # fetch, as if there were something
        return first, float(end)

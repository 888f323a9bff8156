"""The worker's state on Kafka: one compacted changelog topic, a partition per source
partition, written in Kafka transactions and read back to restore.

Each source partition has a transactional producer of its own (``transactional.id``
``<prefix>stream-state-<partition>``): the worker that takes a partition over fences the
producer of the one that had it (a paused or partitioned zombie can no longer commit),
and the transaction that one left open is aborted before the state is read back. A batch's
changes to a partition, its position on the source topics (the ``o`` key), its dead
letters and its part reports are committed together or not at all: the state on the
changelog is always the state of the messages before its recorded position, exactly.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypedDict

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream_app.state.keys import Kind, kind_of
from stream_app.state.partition import Change

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from contextlib import AbstractContextManager

    from confluent_kafka import Message

    from clickstream.settings import Settings
    from schemas import AvroCodec
    from stream_app.outgoing import Outgoing
    from stream_app.state.partition import Backend

logger = logging.getLogger(__name__)

_KAFKA_TIMEOUT = 30.0
_RESTORE_BATCH = 10_000
# A day: a worker's local state older than half this is not trusted (see state.rocksdb).
DELETE_RETENTION_MS = 24 * 3600 * 1000


def changelog_config(settings: Settings) -> dict[str, str]:
    """The changelog topic's configuration: compacted in segments of
    ``CLICKSTREAM_CHANGELOG_SEGMENT_BYTES``, so a restore reads about the live state."""
    return {
        "cleanup.policy": "compact",
        "segment.bytes": str(settings.changelog_segment_bytes),
        "delete.retention.ms": str(DELETE_RETENTION_MS),
        "min.insync.replicas": str(max(1, settings.topic_replication_factor - 1)),
    }


def ensure_changelog(settings: Settings, topic: str) -> None:
    """Create the changelog topic if it is missing (the worker owns it)."""
    admin = AdminClient(settings.kafka_common_config())
    if topic in admin.list_topics(timeout=_KAFKA_TIMEOUT).topics:
        return
    new = NewTopic(
        topic,
        settings.topic_partitions,
        settings.topic_replication_factor,
        config=changelog_config(settings),
    )
    for future in admin.create_topics([new], request_timeout=_KAFKA_TIMEOUT).values():
        try:
            future.result(_KAFKA_TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    logger.info("changelog topic created topic=%s", topic)


class _ProduceOptions(TypedDict, total=False):
    """What an outgoing message may add to ``Producer.produce``."""

    partition: int
    headers: dict[str, bytes]


class PartitionWriter:
    """Commits one partition's changes, with the messages that go with them, in a Kafka
    transaction.

    Args:
        settings: Kafka settings.
        topic: the changelog topic.
        partition: the source (and changelog) partition.
        bounded: a guard stopping the worker when a librdkafka call blocks past its timeout.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int,
        bounded: Callable[[str], AbstractContextManager[None]],
    ) -> None:
        self.partition = partition
        self._topic = topic
        self._bounded = bounded
        self._producer = Producer(
            {
                **settings.kafka_producer_config(),
                "transactional.id": f"{settings.topic_prefix}stream-state-{partition}",
                "transaction.timeout.ms": 60_000,
                "message.timeout.ms": 60_000,
                "linger.ms": 2,
                # A release marks every session it takes: one transaction may hold many.
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            }
        )
        self._last_offset = -1
        self._errors: list[str] = []
        with self._bounded("init_transactions"):
            # Fences the previous owner's producer and aborts what it left open.
            self._producer.init_transactions(_KAFKA_TIMEOUT)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._errors.append(str(error))
        elif message.topic() == self._topic:
            self._last_offset = max(self._last_offset, message.offset() or 0)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)  # the queue drains as the broker acknowledges

    def commit(
        self, records: Sequence[tuple[bytes, bytes | None]], messages: Sequence[Outgoing]
    ) -> int:
        """Commit ``records`` (changelog key and value, None for a removal) and
        ``messages``; return the changelog position after them. Raises KafkaException
        (the transaction aborted: nothing of it is committed)."""
        self._errors.clear()
        self._last_offset = -1
        self._producer.begin_transaction()
        try:
            for key, value in records:
                self._produce(self._topic, value, key, partition=self.partition)
            for message in messages:
                kwargs: _ProduceOptions = {}
                if message.partition is not None:
                    kwargs["partition"] = message.partition
                if message.headers:
                    kwargs["headers"] = message.headers
                self._produce(message.topic, message.value, message.key, **kwargs)
            with self._bounded("commit_transaction"):
                self._producer.commit_transaction(_KAFKA_TIMEOUT)
        except KafkaException:
            self._abort()
            raise
        if self._errors:  # acknowledged commit, yet a message failed: never expected
            raise KafkaException(KafkaError(KafkaError._FAIL, "; ".join(self._errors[:3])))
        return self._last_offset + 1 if self._last_offset >= 0 else -1

    def _abort(self) -> None:
        try:
            with self._bounded("abort_transaction"):
                self._producer.abort_transaction(_KAFKA_TIMEOUT)
        except KafkaException as exc:
            logger.warning("abort failed partition=%s error=%s", self.partition, exc)

    def close(self) -> None:
        self._producer.flush(5)


def encode_changes(codec: AvroCodec, changes: Sequence[Change]) -> list[tuple[bytes, bytes | None]]:
    """The changelog records of ``changes``."""
    return [
        (c.key, None if c.value is None else codec.encode(c.kind.schema, c.value)) for c in changes
    ]


def restore(settings: Settings, codec: AvroCodec, topic: str, backend: Backend) -> tuple[int, int]:
    """Bring ``backend`` up to the end of its changelog partition (committed transactions
    only); return (records read, seconds taken in ms)."""
    started = time.monotonic()
    partition = backend.partition
    consumer = Consumer(
        {
            **settings.kafka_common_config(),
            "group.id": f"{settings.topic_prefix}stream-restore",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    read = 0
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=_KAFKA_TIMEOUT
        )
        if backend.position > high:
            # The topic is younger than the local state (deleted and made again).
            logger.warning(
                "local state past the changelog's end, rebuilt partition=%s position=%s end=%s",
                partition,
                backend.position,
                high,
            )
            backend.drop()
        start = backend.position or OFFSET_BEGINNING
        if high <= max(low, backend.position):
            return 0, int((time.monotonic() - started) * 1000)
        consumer.assign([TopicPartition(topic, partition, start)])
        for records in _until_end(consumer):
            changes, position = _changes(codec, backend, records)
            backend.apply(changes, position)
            read += len(records)
    finally:
        consumer.close()
    return read, int((time.monotonic() - started) * 1000)


def _until_end(consumer: Consumer) -> Iterator[list[Message]]:
    while True:
        # What is fetched already, else the first message to come (librdkafka's batch
        # call would wait out its timeout for a full batch, end of partition or not).
        messages = consumer.consume(_RESTORE_BATCH, timeout=0)
        if not messages:
            first = consumer.poll(_KAFKA_TIMEOUT)
            if first is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "changelog restore stalled"))
            messages = [first]
        records = []
        at_end = False
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                at_end = True
            else:
                raise KafkaException(error)
        if records:
            yield records
        if at_end:
            return


def _changes(
    codec: AvroCodec, backend: Backend, records: list[Message]
) -> tuple[list[Change], int]:
    latest: dict[bytes, bytes | None] = {}
    for message in records:
        key = message.key()
        if key:
            latest[key] = message.value()
    changes = []
    for key, raw in latest.items():
        kind = kind_of(key)
        value = None if raw is None else codec.decode(raw).record
        old = backend.get(key) if kind is Kind.ENTRY else None
        changes.append(Change(key, kind, value, old))
    position = (records[-1].offset() or 0) + 1
    return changes, position

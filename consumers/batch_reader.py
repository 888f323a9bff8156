"""For fine-tuning jobs: learn of each released batch from the batch topic, then read its
sessions with their events from MongoDB, in order, in bounded memory."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from confluent_kafka import Consumer

from clickstream.batch_store import Batch, BatchStore, parse_batch_id
from clickstream.settings import Settings, get_settings
from schemas import AvroCodec, MalformedMessageError, Topics

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

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


class BatchReader:
    """Follows the batch topic and reads batches.

    Args:
        settings: default ``get_settings()`` (Kafka, MongoDB and topic prefix).
        group_id: the job's consumer group: :meth:`follow` resumes after the last batch
            this group finished. Jobs with different algorithms use different groups.
    """

    def __init__(self, settings: Settings | None = None, *, group_id: str = "fine-tuning") -> None:
        self._settings = settings or get_settings()
        if not self._settings.mongodb_url:
            raise ValueError("no MongoDB: set CLICKSTREAM_MONGODB_URI")
        self._store = BatchStore.connect(
            self._settings.mongodb_url, self._settings.mongodb_database
        )
        self._topics = Topics(self._settings.topic_prefix)
        self._group_id = group_id
        self._avro = AvroCodec()

    def follow(self, idle_timeout: float | None = None) -> Iterator[ReleasedBatch]:
        """Each released batch, once per group, in release order.

        A batch counts as done for the group when the caller asks for the next one, so a
        job that dies mid-batch gets that batch again. With ``idle_timeout``, stops after
        that many seconds without a new batch; otherwise follows forever.
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
        last_message_at = time.monotonic()
        try:
            while True:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    if (
                        idle_timeout is not None
                        and time.monotonic() - last_message_at > idle_timeout
                    ):
                        return
                    continue
                last_message_at = time.monotonic()
                try:
                    record = self._avro.decode(message.value() or b"").record
                except MalformedMessageError as exc:
                    logger.warning("undecodable message on the batch topic skipped error=%s", exc)
                else:
                    yield ReleasedBatch(
                        **{name: record[name] for name in ReleasedBatch.__dataclass_fields__}
                    )
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def batch(self, batch_id: str) -> Batch | None:
        """The batch's status and counts; None if there is no such batch."""
        object_id = parse_batch_id(batch_id)
        return self._store.get(object_id) if object_id else None

    def sessions(self, batch_id: str, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """Every session of the batch with all its events (in the order they arrived), by
        ``session_number``; at most ``page_size`` sessions are held at a time."""
        object_id = parse_batch_id(batch_id)
        if object_id is None:
            raise ValueError(f"not a batch id: {batch_id!r}")
        return self._store.iter_sessions(object_id, page_size)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

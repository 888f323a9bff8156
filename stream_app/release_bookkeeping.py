"""The release coordinator's books: what a request or a partition's report on the releases
topic does to the batches and the erasure receipts in MongoDB, and the batch topic's
announcements of what completed.

The report that completes a batch is found from MongoDB alone (the first report of each
partition wins and keeps its offset), so a replayed poll finds the same one, and its
announcement goes out in the poll's transaction (see ``coordinator``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bson import ObjectId

from batches.batch import part_counts
from batches.store import EMPTY, RELEASED, RELEASING
from clickstream.clock import now_ms
from schemas import SchemaName
from stream_app import metrics

if TYPE_CHECKING:
    from confluent_kafka import Message, Producer

    from batches.erasures import ErasureStore
    from batches.store import Batch, BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from schemas.records import (
        BatchReleased,
        ForgetMarker,
        ForgetRequested,
        PartitionForgot,
        PartitionReleased,
        ReleaseOutcome,
        ReleaseRequested,
    )
    from stream_app.control_sender import ControlSender

# The coordinator's logger: the lines read as they did before the coordinator was split.
logger = logging.getLogger("stream_app.coordinator")


class ReleaseBookkeeping:
    """Opens releases and erasures (their markers sent), records the parts reported, and
    completes and announces a batch once every partition reported.

    Args:
        settings: the partitions.
        names: topic names.
        store: the MongoDB batches.
        erasures: the receipts of forget requests.
        avro: the shared codec.
        sender: sends the markers.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        store: BatchStore,
        erasures: ErasureStore,
        avro: AvroCodec,
        sender: ControlSender,
    ) -> None:
        self._settings = settings
        self._names = names
        self._store = store
        self._erasures = erasures
        self._avro = avro
        self._sender = sender

    def open_release(self, request: ReleaseRequested, batch_id: ObjectId, plain: Producer) -> None:
        """A release request: its batch (``batch_id`` if new), and its markers if new."""
        batch, created = self._store.open_release(
            batch_id=batch_id,
            release_id=request["release_id"],
            request_id=request["request_id"],
            min_idle_seconds=request["min_idle_seconds"],
            requested_at_ms=request["requested_at_ms"],
            partition_count=self._settings.topic_partitions,
        )
        if not created or batch.status != RELEASING:
            return
        self._sender.send_markers(plain, batch, range(self._settings.topic_partitions))
        logger.info("release opened batch=%s release=%s", batch.batch_id, batch.release_id)

    def open_erasure(self, request: ForgetRequested, plain: Producer) -> None:
        """A forget request: its receipt, and a marker into every sessions partition."""
        erasure, created = self._erasures.open(
            request["request_id"],
            request["user_id"],
            request["requested_at_ms"],
            self._settings.topic_partitions,
        )
        if not created:
            return
        marker: ForgetMarker = {
            "request_id": request["request_id"],
            "user_id": request["user_id"],
            "requested_at_ms": request["requested_at_ms"],
        }
        self._sender.send(
            plain,
            (self._names.sessions,),
            self._avro.encode(SchemaName.FORGET_MARKER, marker),
            range(self._settings.topic_partitions),
        )
        logger.info("erasure opened request=%s", erasure.request_id)

    def record_forgot(self, report: PartitionForgot, message: Message) -> None:
        """A partition forgot the user: once all did, erase the released copies."""
        offset = message.offset() or 0
        erasure = self._erasures.record_partition(
            report["request_id"], report["partition"], report["session_count"], offset
        )
        if erasure is None or not erasure.complete or erasure.user_id is None:
            return
        done = self._erasures.complete(erasure, now_ms())
        if done is not None:
            logger.info(
                "erasure done request=%s table_sessions=%s batch_sessions=%s",
                done.request_id,
                done.public()["table_session_count"],
                sum(done.batch_session_counts.values()),
            )

    def record_part(self, report: PartitionReleased, message: Message, producer: Producer) -> None:
        """A partition's part is written: once all are, the batch is released (or empty)
        and announced, by the report that completed it."""
        batch_id = ObjectId(report["batch_id"])
        offset = message.offset() or 0
        batch = self._store.record_partition(
            batch_id, report["partition"], part_counts(report), offset
        )
        if batch is None or not batch.complete:
            return
        completing = max(part["offset"] for part in batch.partitions.values())
        if completing != offset:
            return  # completed by another report; this one is a repeat
        if batch.total("session_count") == 0:
            self._store.mark_empty(batch_id)
            metrics.RELEASES.empty()
            # Said on the batch topic too: a requester that only speaks Kafka is answered.
            self._announce_outcome(producer, batch, EMPTY, now_ms())
            logger.info("release empty batch=%s release=%s", batch.batch_id, batch.release_id)
            return
        batch = self._store.mark_released(batch, now_ms())
        if batch is None or batch.status != RELEASED or batch.released_at_ms is None:
            return
        self._announce_outcome(producer, batch, RELEASED, batch.released_at_ms)
        announcement: BatchReleased = {
            "batch_id": batch.batch_id,
            "release_id": batch.release_id,
            "requested_at_ms": batch.requested_at_ms,
            "released_at_ms": batch.released_at_ms,
            "session_count": batch.total("session_count"),
            "event_count": batch.total("event_count"),
            "repeat_session_count": batch.total("repeat_session_count"),
            "content_digest": batch.content_digest,
        }
        producer.produce(
            self._names.batches,
            self._avro.encode(SchemaName.BATCH_RELEASED, announcement),
            batch.batch_id.encode(),
        )
        metrics.RELEASES.announced(batch)
        logger.info(
            "batch released batch=%s release=%s sessions=%s events=%s digest=%s",
            batch.batch_id,
            batch.release_id,
            announcement["session_count"],
            announcement["event_count"],
            batch.content_digest,
        )

    def _announce_outcome(
        self, producer: Producer, batch: Batch, status: str, answered_at_ms: int
    ) -> None:
        """The ReleaseOutcome of a batch, in the poll's transaction (before its
        BatchReleased, which readers of the older contract use)."""
        released = status == RELEASED
        outcome: ReleaseOutcome = {
            "status": "RELEASED" if released else "EMPTY",
            "batch_id": batch.batch_id,
            "release_id": batch.release_id,
            "request_ids": list(batch.request_ids),
            "requested_at_ms": batch.requested_at_ms,
            "answered_at_ms": answered_at_ms,
            "session_count": batch.total("session_count") if released else 0,
            "event_count": batch.total("event_count") if released else 0,
            "repeat_session_count": batch.total("repeat_session_count") if released else 0,
            "unreleasable_session_count": len(batch.unreleasable_session_ids),
            "unreleasable_session_ids": batch.unreleasable_session_ids,
        }
        producer.produce(
            self._names.batches,
            self._avro.encode(SchemaName.RELEASE_OUTCOME, outcome),
            batch.batch_id.encode(),
        )

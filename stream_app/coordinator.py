"""The release coordinator: turns release requests into markers and completed parts into
batches, and announces each batch on the batch topic exactly once.

It reads the releases topic, which has one partition, in the faust leader worker only:
one worker at a time coordinates (another takes over when the leader stops or dies) and
sees requests and reports in one order. A new leader's transactional producer fences the
old one's. Each poll is processed in one Kafka transaction that also commits
the consumed offsets: a batch announcement is committed together with the offset of the
report that completed the batch, and a crash replays the poll with the announcement
aborted. The report that completes a batch is found from MongoDB alone (the first report
of each partition wins and keeps its offset), so a replay finds the same one.

Every marker's delivery is checked: a marker that fails to send aborts the poll's
transaction, which is then replayed (markers again included). A batch still releasing
``CLICKSTREAM_RELEASE_HEAL_SECONDS`` after its markers were sent gets them again on the
partitions that have not reported (their owners treat a repeated marker idempotently),
until it completes.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from bson import ObjectId
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from pymongo.errors import PyMongoError

from batches.expiry import BatchExpiry
from batches.store import EMPTY, RELEASED, RELEASING
from clickstream.clock import now_ms
from schemas import MalformedMessageError, SchemaName, Topics
from stream_app import dead_letters, metrics
from stream_app.control_auth import ControlAuth
from stream_app.exceptions import MarkerDeliveryError
from stream_app.watchdog import CallWatchdog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from confluent_kafka import KafkaError, Message

    from batches.erasures import ErasureStore
    from batches.store import Batch, BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec
    from schemas.records import (
        BatchReleased,
        ForgetMarker,
        ForgetRequested,
        PartitionForgot,
        ReleaseMarker,
        ReleaseOutcome,
    )

logger = logging.getLogger(__name__)

_KAFKA_TIMEOUT = 30.0
# How long past its own timeout a librdkafka call may block before the worker stops.
_STUCK_MARGIN_SECONDS = 30.0
# How long the releases topic's end offset may take to read before it is fetched anyway.
_END_OFFSET_TIMEOUT = 2.0
# The longest wait for the first message once the releases partition is assigned again.
_FIRST_FETCH_SECONDS = 1.0
# How often, at most, stalled releases are looked for.
_HEAL_CHECK_SECONDS = 5.0
# How often batches past their retention are looked for, and how long each look may work.
_EXPIRY_CHECK_SECONDS = 5.0
_EXPIRY_BUDGET_SECONDS = 0.5


def batch_id_for(message: Message) -> ObjectId:
    """A batch id fixed by the request's place on the releases topic, so a replayed
    request gets the same id: its timestamp, then a hash of topic, partition and offset."""
    _, timestamp_ms = message.timestamp()
    place = f"{message.topic()}:{message.partition()}:{message.offset()}".encode()
    return ObjectId(
        struct.pack(">I", max(timestamp_ms, 0) // 1000)
        + hashlib.blake2b(place, digest_size=8).digest()
    )


class ReleaseCoordinator:
    """Runs in a thread of every worker; works while its worker is the leader.

    Args:
        settings: ``CLICKSTREAM_*``; Kafka and topics from them.
        store: the MongoDB batches.
        erasures: the receipts of forget requests.
        avro: the shared codec.
        is_leader: whether this worker leads its group now (see ``app.Leadership``).
    """

    def __init__(
        self,
        settings: Settings,
        store: BatchStore,
        erasures: ErasureStore,
        avro: AvroCodec,
        is_leader: Callable[[], bool],
        on_stuck: Callable[[BaseException, str], None],
    ) -> None:
        self._settings = settings
        self._names = Topics(settings.topic_prefix)
        self._store = store
        self._erasures = erasures
        self._avro = avro
        self._is_leader = is_leader
        self._bounded = CallWatchdog(_KAFKA_TIMEOUT + _STUCK_MARGIN_SECONDS, on_stuck)
        self._control = ControlAuth.from_settings(settings)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="release-coordinator", daemon=True)
        self._last_tick = 0.0
        self._last_heal_check = 0.0
        self._last_expiry_check = 0.0
        self._expiry = BatchExpiry(store)
        self._marker_errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._is_leader():
                self._stopping.wait(0.5)
                continue
            try:
                self._lead()
            except Exception:
                logger.exception("release coordinator failed; starting again")
                self._stopping.wait(1.0)

    def _lead(self) -> None:
        """Coordinate until this worker stops leading."""
        settings = self._settings
        releases = TopicPartition(self._names.releases, 0)
        consumer = Consumer(
            {
                **settings.kafka_common_config(),
                "group.id": f"{settings.topic_prefix}release-coordinator",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        # Markers and ticks need no transaction: partition owners ignore repeats.
        plain = Producer(settings.kafka_producer_config())
        producer = Producer(
            {
                **settings.kafka_producer_config(),
                "transactional.id": f"{settings.topic_prefix}release-coordinator",
            }
        )
        reader = _ReleasesReader(consumer, releases, self._stopping)
        try:
            producer.init_transactions(_KAFKA_TIMEOUT)  # fences the previous leader
            reader.rewind()
            logger.info("release coordinator active")
            while not self._stopping.is_set() and self._is_leader():
                self._maybe_tick(plain)
                self._maybe_heal(plain)
                self._maybe_expire()
                ready = _without_errors(reader.poll(0.2))
                if ready:
                    self._process(reader, plain, producer, ready)
        finally:
            logger.info("release coordinator inactive")
            consumer.close()
            plain.flush(5)
            producer.flush(5)

    def _process(
        self, reader: _ReleasesReader, plain: Producer, producer: Producer, messages: list[Message]
    ) -> None:
        producer.begin_transaction()
        metrics.RELEASES.begin()
        self._marker_errors.clear()
        try:
            for message in messages:
                self._handle(message, plain, producer)
            self._check_markers_delivered(plain)
            with self._bounded("send_offsets_to_transaction"):
                producer.send_offsets_to_transaction(
                    reader.offsets(), reader.consumer.consumer_group_metadata(), _KAFKA_TIMEOUT
                )
            with self._bounded("commit_transaction"):
                producer.commit_transaction(_KAFKA_TIMEOUT)
            metrics.RELEASES.committed()
        except Exception as exc:
            logger.exception("release coordinator poll failed; it will be replayed")
            with self._bounded("abort_transaction"):
                producer.abort_transaction(_KAFKA_TIMEOUT)  # raises if fenced: start again
            reader.rewind()
            if isinstance(exc, MarkerDeliveryError):
                raise  # the replay starts with new producers: the old one may be unusable
            self._stopping.wait(1.0)

    def _handle(self, message: Message, plain: Producer, producer: Producer) -> None:
        try:
            raw = message.value() or b""
            decoded = self._avro.decode(raw)
        except MalformedMessageError as exc:
            logger.warning("undecodable message on the releases topic skipped error=%s", exc)
            return
        if decoded.name == SchemaName.RELEASE_REQUESTED:
            self._open(decoded.record, message, plain)
        elif decoded.name == SchemaName.FORGET_REQUESTED:
            self._open_erasure(cast("ForgetRequested", decoded.record), plain)
        elif decoded.name in (SchemaName.PARTITION_RELEASED, SchemaName.PARTITION_FORGOT):
            refusal = self._control.refusal(
                decoded.name, decoded.record, message.topic() or "", raw, message.headers()
            )
            if refusal is not None:  # a forged report completes nothing
                self._refuse(message, refusal.reason, refusal.detail, decoded.record, producer)
            elif decoded.name == SchemaName.PARTITION_RELEASED:
                self._record_part(decoded.record, message, producer)
            else:
                self._record_forgot(cast("PartitionForgot", decoded.record), message)
        else:
            logger.warning("unexpected %s on the releases topic skipped", decoded.name)

    def _refuse(
        self,
        message: Message,
        reason: str,
        detail: str,
        record: dict[str, Any],
        producer: Producer,
    ) -> None:
        logger.warning(
            "control message refused reason=%s batch=%s partition=%s offset=%s detail=%s",
            reason,
            record.get("batch_id"),
            record.get("partition"),
            message.offset(),
            detail,
        )
        value = dead_letters.dead_letter(
            self._avro,
            reason=reason,
            detail=detail,
            session_id=None,
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            value=message.value(),
        )
        producer.produce(self._names.dead_letter, value)

    def _open(self, request: dict[str, Any], message: Message, plain: Producer) -> None:
        batch, created = self._store.open_release(
            batch_id=batch_id_for(message),
            release_id=request["release_id"],
            request_id=request["request_id"],
            min_idle_seconds=request["min_idle_seconds"],
            requested_at_ms=request["requested_at_ms"],
            partition_count=self._settings.topic_partitions,
        )
        if not created or batch.status != RELEASING:
            return
        self._send_markers(plain, batch, range(self._settings.topic_partitions))
        logger.info("release opened batch=%s release=%s", batch.batch_id, batch.release_id)

    def _open_erasure(self, request: ForgetRequested, plain: Producer) -> None:
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
        self._send_control(
            plain,
            (self._names.sessions,),
            self._avro.encode(SchemaName.FORGET_MARKER, marker),
            range(self._settings.topic_partitions),
        )
        logger.info("erasure opened request=%s", erasure.request_id)

    def _record_forgot(self, report: PartitionForgot, message: Message) -> None:
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

    def _send_markers(self, plain: Producer, batch: Batch, partitions: Iterable[int]) -> None:
        """Queue the batch's marker for ``partitions`` of both ingest topics."""
        record: ReleaseMarker = {
            "batch_id": batch.batch_id,
            "release_id": batch.release_id,
            "requested_at_ms": batch.requested_at_ms,
            "min_idle_seconds": batch.min_idle_seconds,
        }
        marker = self._avro.encode(SchemaName.RELEASE_MARKER, record)
        self._send_control(plain, self._names.ingest(), marker, partitions)

    def _send_control(
        self, plain: Producer, topics: Iterable[str], marker: bytes, partitions: Iterable[int]
    ) -> None:
        """Queue a signed control message for ``partitions`` of ``topics``; each delivery
        is checked by :meth:`_check_markers_delivered`."""
        partitions = list(partitions)
        for topic in topics:
            for partition in partitions:
                plain.produce(
                    topic,
                    marker,
                    partition=partition,
                    headers=self._control.headers(topic, marker),
                    on_delivery=self._on_marker,
                )

    def _on_marker(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._marker_errors.append(f"{message.topic()}[{message.partition()}]: {error}")

    def _check_markers_delivered(self, plain: Producer) -> None:
        """Raise unless every marker queued since the last check was acknowledged."""
        remaining = plain.flush(_KAFKA_TIMEOUT)
        errors, self._marker_errors = self._marker_errors, []
        if remaining or errors:
            raise MarkerDeliveryError(
                f"release markers not delivered: {remaining} unacknowledged, "
                f"{len(errors)} failed ({'; '.join(errors[:3])})"
            )

    def _record_part(self, report: dict[str, Any], message: Message, producer: Producer) -> None:
        batch_id = ObjectId(report["batch_id"])
        counts = {
            name: report[name]
            for name in (
                "session_count",
                "event_count",
                "repeat_session_count",
                "deferred_session_count",
                "content_digest",
            )
        }
        offset = message.offset() or 0
        batch = self._store.record_partition(batch_id, report["partition"], counts, offset)
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

    def _maybe_expire(self) -> None:
        """Expire released batches past their retention, a bounded piece at a time."""
        days = self._settings.batch_retention_days
        now = time.monotonic()
        if days is None or now - self._last_expiry_check < _EXPIRY_CHECK_SECONDS:
            return
        self._last_expiry_check = now
        try:
            self._expiry.expire_due(now_ms() - int(days * 86_400_000), _EXPIRY_BUDGET_SECONDS)
        except PyMongoError as exc:
            logger.warning("batches not expired error=%s", exc)

    def _maybe_heal(self, plain: Producer) -> None:
        """Send the markers of every stalled release again, to the partitions that have not
        reported their part."""
        bound = self._settings.release_heal_seconds
        now = time.monotonic()
        if now - self._last_heal_check < min(_HEAL_CHECK_SECONDS, bound / 2):
            return
        self._last_heal_check = now
        try:
            stalled = self._store.stalled_releases(now_ms() - int(bound * 1000))
        except PyMongoError as exc:
            logger.warning("stalled releases not looked for error=%s", exc)
            return
        for batch in stalled:
            waiting = batch.waiting_partitions
            if not waiting:  # every part reported: completed by the replay of the last report
                continue
            self._marker_errors.clear()
            self._send_markers(plain, batch, waiting)
            # Not delivered: raises, and coordination starts again with new producers.
            self._check_markers_delivered(plain)
            try:
                self._store.mark_markers_sent(ObjectId(batch.batch_id), now_ms())
            except PyMongoError as exc:  # sent again at the next check: harmless
                logger.warning("release heal not recorded batch=%s error=%s", batch.batch_id, exc)
            logger.warning(
                "release healed: markers sent again batch=%s release=%s partitions=%s "
                "attempt=%s waited_s=%s",
                batch.batch_id,
                batch.release_id,
                ",".join(map(str, waiting)),
                batch.heal_count + 1,
                round((now_ms() - batch.markers_sent_at_ms) / 1000),
            )

    def _maybe_tick(self, plain: Producer) -> None:
        now = time.monotonic()
        if now - self._last_tick < self._settings.tick_interval_seconds:
            return
        self._last_tick = now
        tick = self._avro.encode(SchemaName.PARTITION_TICK, {"sent_at_ms": now_ms()})
        signed = self._control.headers(self._names.sessions, tick)
        for partition in range(self._settings.topic_partitions):
            plain.produce(self._names.sessions, tick, partition=partition, headers=signed)
        plain.poll(0)


class _ReleasesReader:
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
        (committed,) = self.consumer.committed([self._partition], _KAFKA_TIMEOUT)
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


def _without_errors(messages: list[Message]) -> list[Message]:
    """The messages that carry a record. An error the client recovers from itself is logged;
    a fatal one raises, and coordination starts again with a new consumer."""
    ready = []
    for message in messages:
        error = message.error()
        if error is None:
            ready.append(message)
        elif error.fatal():
            raise KafkaException(error)
        else:
            logger.warning("release coordinator consume error=%s", error)
    return ready

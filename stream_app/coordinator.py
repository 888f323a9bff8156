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

``ReleaseCoordinator`` is the loop: leadership, the clients, one transaction per poll, each
message to its part. The parts: ``releases_reader`` (the releases partition, read only
while it holds something), ``release_bookkeeping`` (requests and reports against the
batches and erasure receipts, the announcements), ``control_sender`` (markers, signed,
their delivery checked) and ``release_upkeep`` (ticks, heals and expiry on a clock).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from typing import TYPE_CHECKING, cast

from bson import ObjectId
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from schemas import MalformedMessageError, SchemaName, Topics
from stream_app import dead_letters, metrics
from stream_app.control_auth import ControlAuth
from stream_app.control_sender import ControlSender
from stream_app.exceptions import MarkerDeliveryError
from stream_app.release_bookkeeping import ReleaseBookkeeping
from stream_app.release_upkeep import ReleaseUpkeep
from stream_app.releases_reader import KAFKA_TIMEOUT, ReleasesReader
from stream_app.watchdog import CallWatchdog

if TYPE_CHECKING:
    from collections.abc import Callable

    from confluent_kafka import Message

    from batches.erasures import ErasureStore
    from batches.store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec
    from schemas.records import (
        AvroRecord,
        ForgetRequested,
        PartitionForgot,
        PartitionReleased,
        ReleaseRequested,
    )

logger = logging.getLogger(__name__)

# How long past its own timeout a librdkafka call may block before the worker stops.
_STUCK_MARGIN_SECONDS = 30.0


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
        self._avro = avro
        self._is_leader = is_leader
        self._bounded = CallWatchdog(KAFKA_TIMEOUT + _STUCK_MARGIN_SECONDS, on_stuck)
        self._control = ControlAuth.from_settings(settings)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="release-coordinator", daemon=True)
        self._sender = ControlSender(avro, self._names, self._control)
        self._books = ReleaseBookkeeping(settings, self._names, store, erasures, avro, self._sender)
        self._upkeep = ReleaseUpkeep(
            settings, self._names, store, avro, self._control, self._sender
        )

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
        reader = ReleasesReader(consumer, releases, self._stopping)
        try:
            producer.init_transactions(KAFKA_TIMEOUT)  # fences the previous leader
            reader.rewind()
            logger.info("release coordinator active")
            while not self._stopping.is_set() and self._is_leader():
                self._upkeep.maybe_tick(plain)
                self._upkeep.maybe_heal(plain)
                self._upkeep.maybe_expire()
                ready = _without_errors(reader.poll(0.2))
                if ready:
                    self._process(reader, plain, producer, ready)
        finally:
            logger.info("release coordinator inactive")
            consumer.close()
            plain.flush(5)
            producer.flush(5)

    def _process(
        self, reader: ReleasesReader, plain: Producer, producer: Producer, messages: list[Message]
    ) -> None:
        producer.begin_transaction()
        metrics.RELEASES.begin()
        self._sender.forget_errors()
        try:
            for message in messages:
                self._handle(message, plain, producer)
            self._sender.check_delivered(plain)
            with self._bounded("send_offsets_to_transaction"):
                producer.send_offsets_to_transaction(
                    reader.offsets(), reader.consumer.consumer_group_metadata(), KAFKA_TIMEOUT
                )
            with self._bounded("commit_transaction"):
                producer.commit_transaction(KAFKA_TIMEOUT)
            metrics.RELEASES.committed()
        except Exception as exc:
            logger.exception("release coordinator poll failed; it will be replayed")
            with self._bounded("abort_transaction"):
                producer.abort_transaction(KAFKA_TIMEOUT)  # raises if fenced: start again
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
            request = cast("ReleaseRequested", decoded.record)
            self._books.open_release(request, batch_id_for(message), plain)
        elif decoded.name == SchemaName.FORGET_REQUESTED:
            self._books.open_erasure(cast("ForgetRequested", decoded.record), plain)
        elif decoded.name in (SchemaName.PARTITION_RELEASED, SchemaName.PARTITION_FORGOT):
            refusal = self._control.refusal(
                decoded.name, decoded.record, message.topic() or "", raw, message.headers()
            )
            if refusal is not None:  # a forged report completes nothing
                self._refuse(message, refusal.reason, refusal.detail, decoded.record, producer)
            elif decoded.name == SchemaName.PARTITION_RELEASED:
                report = cast("PartitionReleased", decoded.record)
                self._books.record_part(report, message, producer)
            else:
                self._books.record_forgot(cast("PartitionForgot", decoded.record), message)
        else:
            logger.warning("unexpected %s on the releases topic skipped", decoded.name)

    def _refuse(
        self,
        message: Message,
        reason: str,
        detail: str,
        record: AvroRecord,
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

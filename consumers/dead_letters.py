"""For operators: read the dead-letter topic, and send its messages again once the cause is
fixed (a session registered late, a producer mended).

A letter is named by where it is on the dead-letter topic, ``<partition>:<offset>``. A replay
publishes each letter's original message, byte for byte, to the topic and partition it came
from, keyed by its session. It never doubles a click: the stream drops an event
whose ``event_id`` its session already holds, and an identical registration. Only what
clients send is replayed (the sessions and events topics); the pipeline's own control
messages are not (ask for a release again instead). What the stream refuses again comes back
to the dead-letter topic; the replay waits a while and reports those letters.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from consumers.exceptions import DeadLetterError
from schemas import AvroCodec, MalformedMessageError, SchemaName, Topics

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from clickstream.settings import Settings
    from schemas.records import DeadLetter

logger = logging.getLogger(__name__)

_READ_TIMEOUT_SECONDS = 30.0


class PublicLetter(TypedDict):
    """A :class:`Letter` as the command line prints it."""

    id: str
    reason: str
    detail: str
    session_id: str | None
    source: str
    dead_lettered_at_ms: int
    message: NotRequired[DecodedLetter | UndecodableLetter | None]


class DecodedLetter(TypedDict):
    """A letter's message decoded: its schema and its record, bytes as hex."""

    schema: str
    record: object


class UndecodableLetter(TypedDict):
    undecodable: str
    bytes: int


class PublicReplayReport(TypedDict):
    sent: list[str]
    skipped: dict[str, str]
    refused_again: list[PublicLetter]


@dataclass(frozen=True, slots=True)
class Letter:
    """A DeadLetter message: why the stream could not use a message, and that message."""

    id: str
    """``<partition>:<offset>`` on the dead-letter topic."""
    reason: str
    detail: str
    session_id: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    dead_lettered_at_ms: int
    value: bytes | None = field(repr=False)

    def public(self, codec: AvroCodec | None = None) -> PublicLetter:
        """As the command line prints it; with ``codec``, the original message decoded."""
        out: PublicLetter = {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "session_id": self.session_id,
            "source": f"{self.source_topic}/{self.source_partition}/{self.source_offset}",
            "dead_lettered_at_ms": self.dead_lettered_at_ms,
        }
        if codec is not None:
            out["message"] = _decoded(codec, self.value)
        return out


def _decoded(codec: AvroCodec, value: bytes | None) -> DecodedLetter | UndecodableLetter | None:
    if value is None:
        return None
    try:
        decoded = codec.decode(value)
    except MalformedMessageError as exc:
        return {"undecodable": str(exc), "bytes": len(value)}
    return {"schema": decoded.name, "record": _printable(decoded.record)}


def _printable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ReplayReport:
    sent: list[str]
    """The letters whose message was published again (or would be, in a dry run)."""
    skipped: dict[str, str]
    """Letters not replayed, with why."""
    refused_again: list[Letter]
    """Letters the stream wrote for replayed messages while the replay waited."""

    def public(self) -> PublicReplayReport:
        return {
            "sent": self.sent,
            "skipped": self.skipped,
            "refused_again": [letter.public() for letter in self.refused_again],
        }


class DeadLetters:
    """The dead-letter topic of ``settings`` (its Kafka and topic prefix)."""

    def __init__(self, settings: Settings) -> None:
        self._config = settings.kafka_common_config()
        self._topics = Topics(settings.topic_prefix)
        self._codec = AvroCodec()

    def letters(self, reason: str | None = None, since_ms: int | None = None) -> Iterator[Letter]:
        """Every letter on the topic now, oldest first per partition, filtered."""
        ends = self._end_offsets()
        for letter in self._read(dict.fromkeys(ends, OFFSET_BEGINNING), ends):
            if reason is not None and letter.reason != reason:
                continue
            if since_ms is not None and letter.dead_lettered_at_ms < since_ms:
                continue
            yield letter

    def get(self, letter_id: str) -> Letter | None:
        try:
            partition, offset = (int(part) for part in letter_id.split(":"))
        except ValueError:
            raise DeadLetterError(f"not a letter id (partition:offset): {letter_id!r}") from None
        low, high = self._watermarks().get(partition, (0, 0))
        if not low <= offset < high:  # past the end, or expired by the topic's retention
            return None
        for letter in self._read({partition: offset}, {partition: high}, stop_after=1):
            return letter if letter.id == letter_id else None
        return None

    def replay(
        self, letters: Iterable[Letter], *, dry_run: bool = False, wait_seconds: float = 10.0
    ) -> ReplayReport:
        """Publish each letter's message again to where it came from; then, for
        ``wait_seconds``, collect the letters the stream writes for them."""
        replayable = set(self._topics.ingest())
        chosen: list[Letter] = []
        skipped: dict[str, str] = {}
        for letter in letters:
            if letter.value is None:
                skipped[letter.id] = "the letter holds no message"
            elif letter.source_topic not in replayable:
                skipped[letter.id] = f"{letter.source_topic} is the pipeline's own topic"
            else:
                chosen.append(letter)
        if dry_run or not chosen:
            return ReplayReport([letter.id for letter in chosen], skipped, [])
        ends = self._end_offsets()
        self._publish(chosen)
        logger.info("dead letters replayed count=%s", len(chosen))
        values = {letter.value for letter in chosen}
        refused = [letter for letter in self._follow(ends, wait_seconds) if letter.value in values]
        return ReplayReport([letter.id for letter in chosen], skipped, refused)

    def _publish(self, letters: list[Letter]) -> None:
        producer = Producer({**self._config, "enable.idempotence": True, "acks": "all"})
        errors: list[str] = []

        def delivered(err: Any, _message: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for letter in letters:
            key = letter.session_id.encode() if letter.session_id else None
            # To the partition it came from: a gateway's grouped message has no key, and a
            # session's partition never changes (the topics' partition count is fixed).
            producer.produce(
                letter.source_topic,
                letter.value,
                key,
                partition=letter.source_partition,
                on_delivery=delivered,
            )
        if producer.flush(_READ_TIMEOUT_SECONDS) or errors:
            raise DeadLetterError(f"not every message was acknowledged: {errors or 'timed out'}")

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                **self._config,
                "group.id": f"dead-letters-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                # Letters are written in the worker's transactions.
                "isolation.level": "read_committed",
            }
        )

    def _watermarks(self) -> dict[int, tuple[int, int]]:
        """Each partition's first and next offsets."""
        topic = self._topics.dead_letter
        consumer = self._consumer()
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                raise DeadLetterError(f"{topic}: {metadata.error}")
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in metadata.partitions
            }
        except KafkaException as exc:
            raise DeadLetterError(f"{topic} cannot be read: {exc}") from exc
        finally:
            consumer.close()

    def _end_offsets(self) -> dict[int, int]:
        return {p: high for p, (_, high) in self._watermarks().items()}

    def _read(
        self, starts: dict[int, int], ends: dict[int, int], stop_after: int | None = None
    ) -> Iterator[Letter]:
        """The letters of each partition of ``starts`` from there up to its end in ``ends``."""
        ends = {p: end for p, end in ends.items() if p in starts and end > 0}
        if not ends:
            return
        topic = self._topics.dead_letter
        consumer = self._consumer()
        try:
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
            deadline = time.monotonic() + _READ_TIMEOUT_SECONDS
            count = 0
            # Transaction markers take offsets too: done once every position reaches its end.
            while any(
                tp.offset < ends[tp.partition]
                for tp in consumer.position([TopicPartition(topic, p) for p in ends])
            ):
                if time.monotonic() > deadline:
                    raise DeadLetterError(f"{topic}: its end was not reached in time")
                for message in consumer.consume(500, timeout=0.2):
                    partition, offset = message.partition() or 0, message.offset() or 0
                    if message.error() is not None or offset >= ends[partition]:
                        continue
                    yield self._letter(partition, offset, message.value())
                    count += 1
                    if stop_after is not None and count >= stop_after:
                        return
        finally:
            consumer.close()

    def _follow(self, starts: dict[int, int], seconds: float) -> list[Letter]:
        """The letters written from ``starts`` on, for ``seconds``."""
        topic = self._topics.dead_letter
        consumer = self._consumer()
        out: list[Letter] = []
        try:
            consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                for message in consumer.consume(500, timeout=min(left, 0.5)):
                    if message.error() is None:
                        partition, offset = message.partition() or 0, message.offset() or 0
                        out.append(self._letter(partition, offset, message.value()))
        finally:
            consumer.close()
        return out

    def _letter(self, partition: int, offset: int, value: bytes | None) -> Letter:
        letter_id = f"{partition}:{offset}"
        try:
            decoded = self._codec.decode(value or b"")
        except MalformedMessageError as exc:
            raise DeadLetterError(f"letter {letter_id} cannot be read: {exc}") from exc
        if decoded.name != SchemaName.DEAD_LETTER:
            raise DeadLetterError(f"letter {letter_id} is a {decoded.name}")
        record = cast("DeadLetter", decoded.record)
        return Letter(
            id=letter_id,
            reason=record["reason"],
            detail=record["detail"],
            session_id=record["session_id"],
            source_topic=record["source_topic"],
            source_partition=record["source_partition"],
            source_offset=record["source_offset"],
            dead_lettered_at_ms=record["dead_lettered_at_ms"],
            value=record["value"],
        )

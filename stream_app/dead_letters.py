"""Dead letters: input the stream cannot use goes to the dead-letter topic with a reason,
never silently away."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clickstream.clock import now_ms
from schemas import SchemaName
from stream_app.outgoing import Outgoing

if TYPE_CHECKING:
    from confluent_kafka import Message

    from schemas import AvroCodec, Topics
    from schemas.records import DeadLetter

# A dead letter carries the original message, unless that would pass Kafka's 1 MB limit.
MAX_ATTACHED_BYTES = 900 * 1024

logger = logging.getLogger(__name__)

ORPHAN_EVENT_EXPIRED = "orphan_event_expired"
# A message that decodes but breaks the contract (e.g. meta that is not a JSON object).
INVALID_MESSAGE = "invalid_message"
# Handling a message failed twice for a reason of the message's own (not a server's).
HANDLING_FAILED = "handling_failed"
CONFLICTING_REGISTRATION = "conflicting_registration"
SESSION_NOT_REGISTERED = "session_not_registered"
UNDECODABLE_MESSAGE = "undecodable_message"
UNEXPECTED_MESSAGE = "unexpected_message"
SNAPSHOT_REFUSED = "snapshot_refused"


def dead_letter(
    avro: AvroCodec,
    *,
    reason: str,
    detail: str,
    session_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
) -> bytes:
    """An encoded DeadLetter message."""
    record: DeadLetter = {
        "reason": reason,
        "detail": detail,
        "session_id": session_id,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "value": value,
        "dead_lettered_at_ms": now_ms(),
    }
    return avro.encode(SchemaName.DEAD_LETTER, record)


def outgoing(
    avro: AvroCodec,
    names: Topics,
    *,
    reason: str,
    detail: str,
    session_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
) -> Outgoing:
    """A dead letter ready to send, keyed by its session; the original message is left out
    when it would not fit (the detail says so)."""
    if value is not None and len(value) > MAX_ATTACHED_BYTES:
        detail = f"{detail} (original message of {len(value)} bytes not attached)"
        value = None
    logger.warning("dead letter reason=%s session=%s detail=%s", reason, session_id, detail)
    encoded = dead_letter(
        avro,
        reason=reason,
        detail=detail,
        session_id=session_id,
        topic=topic,
        partition=partition,
        offset=offset,
        value=value,
    )
    key = session_id.encode() if session_id is not None else None
    return Outgoing(names.dead_letter, key, encoded, reason=reason)


def of_message(
    avro: AvroCodec,
    names: Topics,
    message: Message,
    *,
    reason: str,
    detail: str,
    session_id: str | None,
    value: bytes | None = None,
) -> Outgoing:
    """A dead letter for a source message (its value, or ``value``: the part at fault)."""
    return outgoing(
        avro,
        names,
        reason=reason,
        detail=detail,
        session_id=session_id,
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        value=message.value() if value is None else value,
    )

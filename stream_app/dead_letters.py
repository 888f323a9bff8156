"""Dead letters: input the stream cannot use goes to the dead-letter topic with a reason,
never silently away."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clickstream.clock import now_ms
from schemas import SchemaName

if TYPE_CHECKING:
    from schemas import AvroCodec
    from schemas.records import DeadLetter

ORPHAN_EVENT_EXPIRED = "orphan_event_expired"
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

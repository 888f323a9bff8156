"""The documents a released session is stored as: one definition, one builder.

A session of a batch is one document in ``batch_sessions`` holding its registration, its
flags and counts and its first events, and, when its events do not fit there, more
documents in ``batch_session_events``, each a chunk of the events that follow, in order.
Every document stays far below MongoDB's 16 MB limit whatever the session holds: a chunk
takes events up to ``CHUNK_BYTES`` (an event larger than that, which a request at the
body limit can carry, gets a chunk of its own), so no session the API accepted is too
large to release.

Ids are deterministic (``<batch_id>:<session_id>`` and ``<batch_id>:<session_id>:<n>``),
so writing a part again after a crash writes the very same documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from schemas import event_item

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from bson import ObjectId

    from schemas.records import Registration, SearchResult, SortBy, StoredEvent

#: Events a document holds, at most (an estimate of their BSON size, on the high side).
CHUNK_BYTES = 4 * 1024 * 1024
# BSON's per-event framing and fixed fields, rounded up.
_EVENT_OVERHEAD_BYTES = 160


class StoredBatchEvent(TypedDict):
    """An event of a released session."""

    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: str | None
    received_at_ms: int
    is_new: bool


class BatchSessionDocument(TypedDict):
    """``batch_sessions``: one session of one batch, with its first events."""

    _id: str
    batch_id: ObjectId
    session_number: int
    session_id: str
    partition: int
    search_query: str
    search_results: list[SearchResult]
    search_meta: str | None
    payload_filter: str | None
    """JSON text."""
    sort_by: SortBy | None
    user_id: str | None
    created_at: int
    is_irrelevant: bool
    is_repeat: bool
    previous_batch_id: str | None
    event_count: int
    new_event_count: int
    events: list[StoredBatchEvent]
    event_chunks: int
    """How many ``batch_session_events`` documents follow with the rest of the events."""


class EventChunkDocument(TypedDict):
    """``batch_session_events``: chunk ``chunk`` (1, 2, ...) of a session's events."""

    _id: str
    batch_id: ObjectId
    session_number: int
    session_id: str
    chunk: int
    events: list[StoredBatchEvent]


@dataclass(frozen=True, slots=True)
class SessionCopy:
    """What a partition owner knows of a session it releases into a batch.

    ``registration`` holds ``search_query``, ``search_results``, ``search_meta``,
    ``user_id``, ``created_at`` and, when known, ``payload_filter`` and ``sort_by``;
    ``events`` are the session's first ``event_count`` events in order (event fields and
    ``received_at_ms``); the first ``new_from`` of them were in its previous batch.
    """

    batch_id: ObjectId
    session_number: int
    session_id: str
    partition: int
    registration: Registration
    is_irrelevant: bool
    previous_batch_id: str | None
    event_count: int
    new_from: int
    events: Iterable[StoredEvent]


def session_id_of(batch_id: ObjectId, session_id: str) -> str:
    return f"{batch_id}:{session_id}"


def event_size(event: StoredEvent | StoredBatchEvent) -> int:
    """About the bytes an event takes in a document (UTF-8, never less)."""
    size = _EVENT_OVERHEAD_BYTES
    for name in ("event_id", "object_id", "event_type", "meta"):
        text = event[name]
        if text is not None:
            size += len(text) if text.isascii() else len(text.encode())
    return size


def _chunks(events: Iterable[StoredBatchEvent]) -> Iterator[list[StoredBatchEvent]]:
    """``events`` in runs of at most ``CHUNK_BYTES`` (one larger event alone); always at
    least one run, empty for a session without events."""
    chunk: list[StoredBatchEvent] = []
    size = 0
    for event in events:
        event_bytes = event_size(event)
        if chunk and size + event_bytes > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(event)
        size += event_bytes
    yield chunk


def session_documents(
    copy: SessionCopy,
) -> tuple[BatchSessionDocument, list[EventChunkDocument]]:
    """The session's document and the chunks of events that follow it."""
    new_from = copy.new_from
    events = (
        {**event_item(e), "received_at_ms": e["received_at_ms"], "is_new": position >= new_from}
        for position, e in enumerate(copy.events)
    )
    first, *rest = _chunks(events)  # type: ignore[arg-type]
    registration = copy.registration
    doc_id = session_id_of(copy.batch_id, copy.session_id)
    head: BatchSessionDocument = {
        "_id": doc_id,
        "batch_id": copy.batch_id,
        "session_number": copy.session_number,
        "session_id": copy.session_id,
        "partition": copy.partition,
        "search_query": registration["search_query"],
        "search_results": registration["search_results"],
        "search_meta": registration["search_meta"],
        "payload_filter": registration["payload_filter"],
        "sort_by": registration["sort_by"],
        "user_id": registration["user_id"],
        "created_at": registration["created_at"],
        "is_irrelevant": copy.is_irrelevant,
        "is_repeat": copy.previous_batch_id is not None,
        "previous_batch_id": copy.previous_batch_id,
        "event_count": copy.event_count,
        "new_event_count": copy.event_count - copy.new_from,
        "events": first,
        "event_chunks": len(rest),
    }
    chunks: list[EventChunkDocument] = [
        {
            "_id": f"{doc_id}:{number}",
            "batch_id": copy.batch_id,
            "session_number": copy.session_number,
            "session_id": copy.session_id,
            "chunk": number,
            "events": chunk,
        }
        for number, chunk in enumerate(rest, start=1)
    ]
    return head, chunks

"""The join of sessions and events: pure functions on a session's entry (a ``SessionEntry``
record), its registration (a ``Registration``) and the pieces holding its events
(``EventPiece`` records).

The rules, read and tested in one place:

- a session is registered once; the first registration wins, an identical one (a retry)
  is dropped, a conflicting one is refused (and dead-lettered by the caller);
- events are de-duplicated by ``event_id`` within their session, first write wins;
- events may arrive before their session and wait in the entry until it is registered;
- a session's events live in pieces of about ``PIECE_BYTES`` each, so no number of requests
  can make one state value too large for Kafka: the entry only counts them, and the
  registration is a value of its own, so a click rewrites neither.

Each stored item keeps the offset it came from: release cuts compare offsets. Nothing here
mutates its arguments: every change is a new value, which the caller stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal, cast

from schemas import event_item

# The state's values, re-exported (other modules name them join.SessionEntry etc.).
from schemas.records import EventPiece as EventPiece  # noqa: TC001
from schemas.records import Registration as Registration  # noqa: TC001
from schemas.records import SessionEntry as SessionEntry  # noqa: TC001
from schemas.records import StoredEvent as StoredEvent  # noqa: TC001

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from batches.documents import BatchSessionDocument
    from schemas.records import EventItem, SessionEvent, SessionRegistered

    PieceReader = Callable[[int], EventPiece | None]

# A piece grows to about this size, then the next one starts: a changelog message stays far
# below Kafka's 1 MB limit, and appending events rewrites at most this much. An event
# larger than this (it fits in a request, so in a message) gets a piece of its own. At
# 64 KiB, busy sessions (hundreds of clicks) made re-encoding their last piece a third of
# the worker's time and the bench's end-to-end p99 3.2 s; at 8 KiB it was 1.6 s.
PIECE_BYTES = 8 * 1024
_EVENT_OVERHEAD_BYTES = 48
# What makes two registrations the same session. created_at and received_at_ms are left
# out: a client retrying without created_at gets a new server time each time.
_IdentityField = Literal[
    "search_query", "search_results", "search_meta", "user_id", "payload_filter", "sort_by"
]
_IDENTITY_FIELDS: tuple[_IdentityField, ...] = (
    "search_query",
    "search_results",
    "search_meta",
    "user_id",
    "payload_filter",
    "sort_by",
)
# The registration offset of a session brought back from its released copy: before any cut.
REVIVED_OFFSET = -1


class Registered(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def new_entry(session_id: str, partition: int) -> SessionEntry:
    return {
        "session_id": session_id,
        "partition": partition,
        "registered_offset": None,
        "registered_at_ms": 0,
        "irrelevant_offset": None,
        "waiting_since_ms": None,
        "event_count": 0,
        "piece_count": 0,
        "last_piece_bytes": 0,
        "last_event_offset": None,
        "last_active_ms": 0,
        "released": None,
    }


def is_registered(entry: SessionEntry) -> bool:
    return entry["registered_offset"] is not None


def register(
    entry: SessionEntry,
    existing: Registration | None,
    record: SessionRegistered,
    offset: int,
) -> tuple[Registered, SessionEntry, Registration | None]:
    """Apply a SessionRegistered record read at ``offset`` to a session whose registration
    is ``existing``; on NEW, the entry and the registration to write."""
    if existing is not None:
        if existing["offset"] == offset or all(
            existing.get(name) == record[name] for name in _IDENTITY_FIELDS
        ):
            return Registered.DUPLICATE, entry, None
        return Registered.CONFLICT, entry, None
    received_at_ms = record["received_at_ms"]
    registration = _registration(record, received_at_ms, offset)
    return (
        Registered.NEW,
        {
            **entry,
            "registered_offset": offset,
            "registered_at_ms": received_at_ms,
            "waiting_since_ms": None,
            "last_active_ms": max(entry["last_active_ms"], received_at_ms),
        },
        registration,
    )


def _registration(
    source: SessionRegistered | BatchSessionDocument, received_at_ms: int, offset: int
) -> Registration:
    """A session's registration as the state keeps it, from a SessionRegistered record or a
    released copy of the session (both carry these fields)."""
    return {
        "search_query": source["search_query"],
        "search_results": source["search_results"],
        "search_meta": source["search_meta"],
        "user_id": source["user_id"],
        "created_at": source["created_at"],
        "received_at_ms": received_at_ms,
        "offset": offset,
        "payload_filter": source["payload_filter"],
        "sort_by": source["sort_by"],
    }


def conflicting_fields(existing: Registration, record: SessionRegistered) -> list[str]:
    return [name for name in _IDENTITY_FIELDS if existing.get(name) != record[name]]


def stored_event(event: EventItem, received_at_ms: int, offset: int) -> StoredEvent:
    """An event of a SessionEvents (or SessionEvent) record as the pieces keep it."""
    stored = cast("StoredEvent", event_item(event))  # one copy per event, not two
    stored["received_at_ms"] = received_at_ms
    stored["offset"] = offset
    return stored


def event_size(event: StoredEvent) -> int:
    """About the bytes an event takes in a piece (characters, not bytes: a bound, not a count)."""
    meta = event["meta"]
    return (
        _EVENT_OVERHEAD_BYTES
        + len(event["event_id"])
        + len(event["object_id"])
        + len(event["event_type"])
        + (len(meta) if meta else 0)
    )


@dataclass(frozen=True, slots=True)
class Appended:
    """What applying events changes: the entry, the pieces to write (the last one
    rewritten, new ones after it) and the ids of the events that were new."""

    entry: SessionEntry
    pieces: dict[int, EventPiece]
    new_ids: list[str]


def append_events(
    entry: SessionEntry,
    last_piece: EventPiece | None,
    known_ids: set[str],
    events: Iterable[EventItem],
    received_at_ms: int,
    offset: int,
    read_at_ms: int,
) -> Appended | None:
    """Apply the events of one message read at ``offset``, in order; None if none is new.

    ``known_ids`` are the ids the session already has: a retried request, or a repeat within
    the message, is dropped (first write wins). ``last_piece`` is the session's last piece.
    Events of a session not registered yet wait for it from ``read_at_ms``, when the worker
    read them (not from when they were accepted: a producer's clock, or a backlog after an
    outage, would expire them before their registration was read).
    """
    new: list[StoredEvent] = []
    seen: set[str] = set()
    for event in events:
        event_id = event["event_id"]
        if event_id in known_ids or event_id in seen:
            continue
        seen.add(event_id)
        new.append(stored_event(event, received_at_ms, offset))
    if not new:
        return None
    appended = _with_events(entry, last_piece, new)
    waiting = entry["waiting_since_ms"]
    if entry["registered_offset"] is None and waiting is None:
        waiting = read_at_ms
    updated: SessionEntry = {
        **appended.entry,
        "last_event_offset": offset,
        "last_active_ms": max(entry["last_active_ms"], received_at_ms),
        "waiting_since_ms": waiting,
    }
    return Appended(updated, appended.pieces, appended.new_ids)


def _with_events(
    entry: SessionEntry, last_piece: EventPiece | None, new: list[StoredEvent]
) -> Appended:
    """``new`` stored after the entry's events: its last piece filled up, then new pieces."""
    session_id = entry["session_id"]
    if entry["piece_count"] and last_piece is not None:
        index = entry["piece_count"] - 1
        current = list(last_piece["events"])
        size = entry["last_piece_bytes"]
    else:
        index, current, size = entry["piece_count"], [], 0
    pieces: dict[int, EventPiece] = {}
    for stored in new:
        stored_size = event_size(stored)
        if current and size + stored_size > PIECE_BYTES:
            pieces[index] = {"session_id": session_id, "index": index, "events": current}
            index, current, size = index + 1, [], 0
        current.append(stored)
        size += stored_size
    pieces[index] = {"session_id": session_id, "index": index, "events": current}
    updated: SessionEntry = {
        **entry,
        "event_count": entry["event_count"] + len(new),
        "piece_count": index + 1,
        "last_piece_bytes": size,
    }
    return Appended(updated, pieces, [stored["event_id"] for stored in new])


def events_of(entry: SessionEntry, read_piece: PieceReader) -> Iterator[StoredEvent]:
    """The session's events in order, piece by piece."""
    for index in range(entry["piece_count"]):
        piece = read_piece(index)
        if piece is not None:
            yield from piece["events"]


def count_before(entry: SessionEntry, read_piece: PieceReader, offset: int) -> int:
    """How many of the session's events lie below ``offset`` (a prefix: events are appended
    in offset order). Only the newest pieces are read, and only when the cut falls in them."""
    last = entry["last_event_offset"]
    count: int = entry["event_count"]
    if last is None or last < offset:
        return count
    for event in _newest_first(entry, read_piece):
        if event["offset"] < offset:
            return count
        count -= 1
    return count


def last_active_before(entry: SessionEntry, read_piece: PieceReader, offset: int) -> int:
    """When the session was last active as of a cut at ``offset`` on the events topic: its
    registration, or its last event below the cut. The same however far past the cut the
    worker has read (``last_active_ms`` is not), so a replayed cut defers the same sessions."""
    active: int = entry["registered_at_ms"] if is_registered(entry) else 0
    if entry["last_event_offset"] is None:
        return active
    for event in _newest_first(entry, read_piece):
        if event["offset"] < offset:
            return max(active, int(event["received_at_ms"]))
    return active


def _newest_first(entry: SessionEntry, read_piece: PieceReader) -> Iterator[StoredEvent]:
    """The session's events from the newest back, reading a piece only when reached."""
    for index in reversed(range(entry["piece_count"])):
        piece = read_piece(index)
        yield from reversed(piece["events"] if piece else [])


def mark_irrelevant(entry: SessionEntry, offset: int) -> SessionEntry | None:
    """Apply a SessionMarkedIrrelevant record; None if already marked."""
    if entry["irrelevant_offset"] is not None:
        return None
    return {**entry, "irrelevant_offset": offset}


def marked_released(
    entry: SessionEntry,
    batch_id: str,
    event_count: int,
    previous_batch_id: str | None,
    previous_event_count: int,
) -> SessionEntry:
    """``entry`` once its first ``event_count`` events are in batch ``batch_id``; the first
    ``previous_event_count`` of them were in ``previous_batch_id`` (None: its first batch)."""
    return {
        **entry,
        "released": {
            "batch_id": batch_id,
            "event_count": event_count,
            "previous_batch_id": previous_batch_id,
            "previous_event_count": previous_event_count,
        },
    }


def is_fully_released(entry: SessionEntry) -> bool:
    """Released with every event it has: no release needs to look at it again until it
    changes."""
    released = entry["released"]
    return released is not None and released["event_count"] == entry["event_count"]


WAITING = "w"
QUIET = "q"


def watched(entry: SessionEntry) -> tuple[str, int] | None:
    """What a tick may one day do to the session, and since when: ``(WAITING, since)`` for
    events waiting for their registration (expired after the orphan wait), ``(QUIET,
    since)`` for a session released with everything it has (retired after the retention
    time); None when no tick needs it. Independent of the settings, so an index of it stays
    true when they change."""
    if entry["registered_offset"] is None:
        since = entry["waiting_since_ms"]
        return None if since is None else (WAITING, since)
    if is_fully_released(entry):
        return QUIET, entry["last_active_ms"]
    return None


def is_waiting_too_long(entry: SessionEntry, now_ms: int, wait_ms: int) -> bool:
    """Events whose session was never registered, waiting for longer than ``wait_ms``."""
    since = entry["waiting_since_ms"]
    return entry["registered_offset"] is None and since is not None and now_ms - since >= wait_ms


def is_retired(entry: SessionEntry, now_ms: int, retention_ms: int) -> bool:
    """A session released with everything it has, quiet for ``retention_ms``: its released
    copy in MongoDB is all there is to keep (the caller also makes sure that no message of
    it can be read again)."""
    return (
        is_registered(entry)
        and is_fully_released(entry)
        and now_ms - entry["last_active_ms"] >= retention_ms
    )


@dataclass(frozen=True, slots=True)
class Revived:
    """A retired session brought back: its registration, entry and pieces to write."""

    registration: Registration
    appended: Appended


def revived(
    waiting: SessionEntry,
    waiting_events: list[StoredEvent],
    released: BatchSessionDocument,
) -> Revived:
    """A retired session whose events came back: the entry ``waiting`` for a registration
    that never came (a retired session's was read long ago), joined to the session's latest
    released copy (a batch session document, with its events). Registered before any cut;
    the copy's events stored again first, before any cut, marked released in that batch;
    then the waiting events the copy lacks. An old event sent again is a duplicate, and the
    next release carries the session as a repeat whose new events are the waiting ones."""
    old = [stored_event(e, e["received_at_ms"], REVIVED_OFFSET) for e in released["events"]]
    old_ids = {event["event_id"] for event in old}
    new = [event for event in waiting_events if event["event_id"] not in old_ids]
    received_at_ms = waiting["waiting_since_ms"] or waiting["last_active_ms"]
    registration = _registration(released, received_at_ms, REVIVED_OFFSET)
    entry = marked_released(
        {
            **new_entry(waiting["session_id"], waiting["partition"]),
            "registered_offset": REVIVED_OFFSET,
            "registered_at_ms": received_at_ms,
            "last_active_ms": waiting["last_active_ms"],
        },
        str(released["batch_id"]),
        len(old),
        released["previous_batch_id"],
        len(old) - released["new_event_count"],
    )
    stored = old + new
    if not stored:
        return Revived(registration, Appended(entry, {}, []))
    appended = _with_events(entry, None, stored)
    last_offset = new[-1]["offset"] if new else REVIVED_OFFSET
    return Revived(
        registration,
        Appended(
            {**appended.entry, "last_event_offset": last_offset},
            appended.pieces,
            [event["event_id"] for event in new],
        ),
    )


def event_record(session_id: str, event: StoredEvent) -> SessionEvent:
    """A stored event as the SessionEvent record it came from."""
    return {
        "session_id": session_id,
        **event_item(event),
        "received_at_ms": event["received_at_ms"],
    }

"""The join of sessions and events, on a session's table entry (a ``SessionState`` record).

Pure functions on plain dicts, so the stream's rules are read and tested in one place:

- a session is registered once; the first registration wins, an identical one (a retry)
  is dropped, a conflicting one is refused (and dead-lettered by the caller);
- events are de-duplicated by ``event_id`` within their session, first write wins;
- events may arrive before their session and wait in the entry until it is registered.

Each stored item keeps the offset it came from: release cuts compare offsets.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

SessionState = dict[str, Any]

# What makes two registrations the same session. created_at and received_at_ms are left
# out: a client retrying without created_at gets a new server time each time.
_IDENTITY_FIELDS = ("search_query", "search_results", "search_meta", "user_id")


class Registered(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def new_state(session_id: str, partition: int) -> SessionState:
    return {
        "session_id": session_id,
        "partition": partition,
        "registration": None,
        "irrelevant_offset": None,
        "events": [],
        "waiting_since_ms": None,
    }


def register(state: SessionState, record: dict[str, Any], offset: int) -> Registered:
    """Apply a SessionRegistered record at ``offset``."""
    existing = state["registration"]
    if existing is not None:
        if existing["offset"] == offset or all(
            existing[name] == record[name] for name in _IDENTITY_FIELDS
        ):
            return Registered.DUPLICATE
        return Registered.CONFLICT
    state["registration"] = {
        "search_query": record["search_query"],
        "search_results": record["search_results"],
        "search_meta": record["search_meta"],
        "user_id": record["user_id"],
        "created_at": record["created_at"],
        "received_at_ms": record["received_at_ms"],
        "offset": offset,
    }
    state["waiting_since_ms"] = None
    return Registered.NEW


def conflicting_fields(state: SessionState, record: dict[str, Any]) -> list[str]:
    registration = state["registration"] or {}
    return [name for name in _IDENTITY_FIELDS if registration.get(name) != record[name]]


def add_events(
    state: SessionState, events: Iterable[dict[str, Any]], received_at_ms: int, offset: int
) -> int:
    """Apply the events of one message read at ``offset``, in order; how many were new.
    An ``event_id`` the session already has (a retry, or a repeat within the message) is
    dropped: first write wins."""
    stored = state["events"]
    known = {e["event_id"] for e in stored}
    added = 0
    for event in events:
        event_id = event["event_id"]
        if event_id in known:
            continue
        known.add(event_id)
        stored.append(
            {
                "event_id": event_id,
                "object_id": event["object_id"],
                "event_type": event["event_type"],
                "created_at": event["created_at"],
                "meta": event["meta"],
                "received_at_ms": received_at_ms,
                "offset": offset,
            }
        )
        added += 1
    if added and state["registration"] is None and state["waiting_since_ms"] is None:
        state["waiting_since_ms"] = received_at_ms
    return added


def mark_irrelevant(state: SessionState, offset: int) -> bool:
    """Apply a SessionMarkedIrrelevant record; False if already marked."""
    if state["irrelevant_offset"] is not None:
        return False
    state["irrelevant_offset"] = offset
    return True


def is_waiting_too_long(state: SessionState, now_ms: int, wait_ms: int) -> bool:
    """Events whose session was never registered, waiting for longer than ``wait_ms``."""
    since = state["waiting_since_ms"]
    return state["registration"] is None and since is not None and now_ms - since >= wait_ms


def event_record(state: SessionState, event: dict[str, Any]) -> dict[str, Any]:
    """A stored event as the SessionEvent record it came from."""
    return {
        "session_id": state["session_id"],
        "event_id": event["event_id"],
        "object_id": event["object_id"],
        "event_type": event["event_type"],
        "created_at": event["created_at"],
        "meta": event["meta"],
        "received_at_ms": event["received_at_ms"],
    }

"""A session as the worker's committed state holds it, shown as the API shows sessions."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from batches.public import public_session
from stream_app import join
from stream_app.state.keys import entry_key, piece_key, registration_key

if TYPE_CHECKING:
    from batches.public import PublicSession
    from stream_app.state.partition import Backend


def public_state(
    entry: join.SessionEntry,
    registration: join.Registration,
    events: list[join.StoredEvent],
    events_limit: int,
) -> PublicSession:
    """A registered session's entry and registration, with its first events."""
    return public_session(
        {
            "session_id": entry["session_id"],
            "search_query": registration["search_query"],
            "search_results": registration["search_results"],
            "search_meta": registration["search_meta"],
            "payload_filter": registration["payload_filter"],
            "sort_by": registration["sort_by"],
            "user_id": registration["user_id"],
            "created_at": registration["created_at"],
            "is_irrelevant": entry["irrelevant_offset"] is not None,
            "event_count": entry["event_count"],
            "events": events,
        },
        events_limit,
    )


def read_session(backend: Backend, session_id: str, events_limit: int) -> PublicSession | None:
    """The session with its first ``events_limit`` events; None if not registered."""
    entry = backend.get(entry_key(session_id))
    if entry is None or not join.is_registered(entry):
        return None
    registration = backend.get(registration_key(session_id))
    if registration is None:
        return None
    events = join.events_of(entry, lambda index: backend.get(piece_key(session_id, index)))
    return public_state(
        entry, registration, list(itertools.islice(events, events_limit)), events_limit
    )

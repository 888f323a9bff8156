"""Reading a session from the tables over HTTP: any worker answers, forwarding the request
to the worker that owns the session's partition (faust's table routing)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from batches.public import public_session
from stream_app import join

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response, View

    from stream_app.tables import StreamTables

SESSION_PATH = "/sessions/"
READY_PATH = "/ready/"
DEFAULT_EVENTS_LIMIT = 100


def public_state(
    entry: join.SessionEntry, events: list[join.StoredEvent], events_limit: int
) -> dict[str, Any]:
    """A registered session's table entry, with its first events, as the API shows it."""
    registration = entry["registration"]
    if registration is None:  # the caller answers 404 for a session not registered
        raise TypeError(f"session {entry['session_id']} is not registered")
    return public_session(
        {
            "session_id": entry["session_id"],
            "search_query": registration["search_query"],
            "search_results": registration["search_results"],
            "search_meta": registration["search_meta"],
            "user_id": registration["user_id"],
            "created_at": registration["created_at"],
            "is_irrelevant": entry["irrelevant_offset"] is not None,
            "event_count": entry["event_count"],
            "events": events,
        },
        events_limit,
    )


def attach_session_view(app: faust.App, tables: StreamTables) -> None:
    sessions, pieces = tables.sessions, tables.pieces

    @app.page(SESSION_PATH)
    @app.table_route(table=sessions, query_param="session_id")
    async def session(web: View, request: Request) -> Response:
        session_id = request.query["session_id"]
        try:
            events_limit = int(request.query.get("events_limit", DEFAULT_EVENTS_LIMIT))
        except ValueError:
            return web.json({"detail": "events_limit must be an integer"}, status=422)
        entry = sessions.get(session_id)
        if entry is None or entry["registration"] is None:
            return web.json({"detail": f"session {session_id!r} is not registered"}, status=404)
        events_limit = max(events_limit, 0)
        reader = lambda index: pieces.get(join.piece_key(session_id, index))  # noqa: E731
        events = list(itertools.islice(join.events_of(entry, reader), events_limit))
        return web.json(public_state(entry, events, events_limit))

    @app.page(READY_PATH)
    async def ready(web: View, request: Request) -> Response:
        """200 once this worker has its partitions and their tables are recovered."""
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if app.rebalancing or app.in_recovery or not recovered:
            return web.json({"status": "recovering"}, status=503)
        return web.json({"status": "ready"})

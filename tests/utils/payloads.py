"""Request bodies with sensible defaults and random ids."""

from __future__ import annotations

import time
import uuid
from typing import Any


def new_id() -> str:
    return uuid.uuid4().hex


def session_body(**overrides: Any) -> dict[str, Any]:
    """The seed's session registration, with fresh ids and a current timestamp."""
    body: dict[str, Any] = {
        "session_id": new_id(),
        "search_query": "user search query",
        "search_results": [
            {"object_id": new_id(), "rank": 0.3, "item_info": {}},
            {"object_id": new_id()},
            {"object_id": new_id()},
        ],
        "search_meta": {},
        "user_id": new_id(),
        "created_at": int(time.time()),
    }
    body.update(overrides)
    return body


def event_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": new_id(), "object_id": new_id()}
    body.update(overrides)
    return body


def events_body(session_id: str, count: int = 3, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "session_id": session_id,
        "events": [event_body() for _ in range(count)],
    }
    body.update(overrides)
    return body

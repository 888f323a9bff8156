"""A stored session as the API shows it: shared by the gateway (batch pages) and the stream
app's session view (table entries), apart from the MongoDB store so neither needs pymongo
to format one."""

from __future__ import annotations

from typing import Any

from schemas import event_item, from_json_text


def public_session(doc: dict[str, Any], events_limit: int | None = None) -> dict[str, Any]:
    """A stored session (a batch document or a table entry) as the API shows it."""
    events = doc["events"] if events_limit is None else doc["events"][:events_limit]
    out = {
        "session_id": doc["session_id"],
        "search_query": doc["search_query"],
        "search_results": [
            {"object_id": r["object_id"], "rank": r["rank"], "meta": from_json_text(r["meta"])}
            for r in doc["search_results"]
        ],
        "search_meta": from_json_text(doc["search_meta"]),
        "payload_filter": from_json_text(doc.get("payload_filter")),
        "sort_by": doc.get("sort_by"),
        "user_id": doc["user_id"],
        "created_at": doc["created_at"],
        "is_irrelevant": doc["is_irrelevant"],
        "event_count": doc.get("event_count", len(doc["events"])),
        "events": [_public_event(e) for e in events],
    }
    if "session_number" in doc:
        out = {
            "session_number": doc["session_number"],
            **out,
            "is_repeat": doc["is_repeat"],
            # Batches written before repeats named their new events hold neither field.
            "previous_batch_id": doc.get("previous_batch_id"),
            "new_event_count": doc.get("new_event_count", out["event_count"]),
        }
    return out


def _public_event(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {**event_item(event), "meta": from_json_text(event["meta"])}
    if "is_new" in event:
        out["is_new"] = event["is_new"]
    return out

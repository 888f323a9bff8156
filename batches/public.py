"""A stored session as the API shows it: shared by the gateway (batch pages) and the stream
app's session view (table entries), apart from the MongoDB store so neither needs pymongo
to format one."""

from __future__ import annotations

from typing import TYPE_CHECKING, NotRequired, TypedDict, cast, final, overload

from schemas import event_item, from_json_text

if TYPE_CHECKING:
    from batches.documents import BatchSessionDocument, StoredBatchEvent
    from schemas import JsonObject
    from schemas.records import SearchResult, SortBy, StoredEvent


@final  # so ``"session_number" in doc`` tells it from a batch's session
class TableSession(TypedDict):
    """A registered session of the worker's tables, as ``stream_app.session_view`` gathers
    it (its entry, its registration, its first events)."""

    session_id: str
    search_query: str
    search_results: list[SearchResult]
    search_meta: str | None
    payload_filter: str | None
    sort_by: SortBy | None
    user_id: str | None
    created_at: int
    is_irrelevant: bool
    event_count: int
    events: list[StoredEvent]


class PublicSearchResult(TypedDict):
    object_id: str
    rank: float | None
    meta: JsonObject | None


class PublicEvent(TypedDict):
    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: JsonObject | None
    is_new: NotRequired[bool]
    """Of a batch session: whether the event is new in this batch."""


class PublicSession(TypedDict):
    """A session as the API shows it (of the worker's tables: ``PublicBatchSession`` for a
    batch's)."""

    session_id: str
    search_query: str
    search_results: list[PublicSearchResult]
    search_meta: JsonObject | None
    payload_filter: JsonObject | None
    sort_by: SortBy | None
    user_id: str | None
    created_at: int
    is_irrelevant: bool
    event_count: int
    events: list[PublicEvent]


class PublicBatchSession(PublicSession):
    """A session of a batch as the API and the readers of batches show it."""

    session_number: int
    is_repeat: bool
    previous_batch_id: str | None
    new_event_count: int


@overload
def public_session(
    doc: BatchSessionDocument, events_limit: int | None = None
) -> PublicBatchSession: ...
@overload
def public_session(doc: TableSession, events_limit: int | None = None) -> PublicSession: ...
def public_session(
    doc: BatchSessionDocument | TableSession, events_limit: int | None = None
) -> PublicSession | PublicBatchSession:
    """A stored session (a batch document or a table entry) as the API shows it."""
    events = doc["events"] if events_limit is None else doc["events"][:events_limit]
    out: PublicSession = {
        "session_id": doc["session_id"],
        "search_query": doc["search_query"],
        "search_results": [
            {"object_id": r["object_id"], "rank": r["rank"], "meta": from_json_text(r["meta"])}
            for r in doc["search_results"]
        ],
        "search_meta": from_json_text(doc["search_meta"]),
        "payload_filter": from_json_text(doc["payload_filter"]),
        "sort_by": doc["sort_by"],
        "user_id": doc["user_id"],
        "created_at": doc["created_at"],
        "is_irrelevant": doc["is_irrelevant"],
        "event_count": doc["event_count"],
        "events": [_public_event(e) for e in events],
    }
    if "session_number" in doc:
        batch_session: PublicBatchSession = {
            "session_number": doc["session_number"],
            **out,
            "is_repeat": doc["is_repeat"],
            "previous_batch_id": doc["previous_batch_id"],
            "new_event_count": doc["new_event_count"],
        }
        return batch_session
    return out


def _public_event(event: StoredBatchEvent | StoredEvent) -> PublicEvent:
    out = cast("PublicEvent", {**event_item(event), "meta": from_json_text(event["meta"])})
    if "is_new" in event:
        out["is_new"] = event["is_new"]
    return out

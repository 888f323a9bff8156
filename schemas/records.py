"""The records of ``avro/*.avsc`` as Python types: one TypedDict per Avro record (nested
named records too), so strict mypy catches a misspelled key.

The ``.avsc`` files stay the definition; ``tests/schemas/test_records.py`` fails when a
TypedDict here and its record differ by a field, or when a record has no TypedDict.
A union with ``null`` is ``X | None``; ``long`` and ``int`` are ``int``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypedDict, final

if TYPE_CHECKING:
    from collections.abc import Mapping


class SchemaName(StrEnum):
    """The full name of every message schema (those with an id in ``schema_ids.json``).

    A member equals its string, so ``decoded.name == SchemaName.SESSION_EVENTS`` holds.
    """

    SESSION_REGISTERED = "clickstream.SessionRegistered"
    SESSION_EVENT = "clickstream.SessionEvent"
    SESSION_EVENTS = "clickstream.SessionEvents"
    SESSION_EVENTS_BATCH = "clickstream.SessionEventsBatch"
    SESSION_REGISTERED_BATCH = "clickstream.SessionRegisteredBatch"
    SESSION_MARKED_IRRELEVANT = "clickstream.SessionMarkedIrrelevant"
    RELEASE_MARKER = "clickstream.ReleaseMarker"
    PARTITION_TICK = "clickstream.PartitionTick"
    RELEASE_REQUESTED = "clickstream.ReleaseRequested"
    PARTITION_RELEASED = "clickstream.PartitionReleased"
    BATCH_RELEASED = "clickstream.BatchReleased"
    RELEASE_OUTCOME = "clickstream.ReleaseOutcome"
    DEAD_LETTER = "clickstream.DeadLetter"
    SESSION_ENTRY = "clickstream.SessionEntry"
    REGISTRATION = "clickstream.Registration"
    EVENT_PIECE = "clickstream.EventPiece"
    PARTITION_RELEASES = "clickstream.PartitionReleases"
    SOURCE_OFFSETS = "clickstream.SourceOffsets"
    FORGET_REQUESTED = "clickstream.ForgetRequested"
    FORGET_MARKER = "clickstream.ForgetMarker"
    PARTITION_FORGOT = "clickstream.PartitionForgot"


AvroRecord = dict[str, object]
"""A decoded record whose schema is known only by its name (``Decoded.name``): cast it to
that schema's TypedDict below once the name is checked."""


# Ingest: what the gateway and the producer library publish.


class SearchResult(TypedDict):
    object_id: str
    rank: float | None
    meta: str | None


class SortBy(TypedDict):
    field: str
    order: str
    force_not_payload: bool


class SessionRegistered(TypedDict):
    session_id: str
    search_query: str
    search_results: list[SearchResult]
    search_meta: str | None
    user_id: str | None
    created_at: int
    received_at_ms: int
    payload_filter: str | None
    sort_by: SortBy | None


class EventItem(TypedDict):
    """An event of a SessionEvents message; the fields every event record shares."""

    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: str | None


class SessionEvents(TypedDict):
    session_id: str
    events: list[EventItem]
    received_at_ms: int


class SessionEventsBatch(TypedDict):
    requests: list[SessionEvents]


class SessionRegisteredBatch(TypedDict):
    requests: list[SessionRegistered]


class SessionEvent(TypedDict):
    session_id: str
    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: str | None
    received_at_ms: int


class SessionMarkedIrrelevant(TypedDict):
    session_id: str
    received_at_ms: int


# Control: releases and ticks.


class ReleaseRequested(TypedDict):
    request_id: str
    release_id: str
    min_idle_seconds: int
    requested_at_ms: int


class ReleaseMarker(TypedDict):
    batch_id: str
    release_id: str
    requested_at_ms: int
    min_idle_seconds: int


class PartitionTick(TypedDict):
    sent_at_ms: int


class PartitionReleased(TypedDict):
    batch_id: str
    release_id: str
    partition: int
    session_count: int
    event_count: int
    repeat_session_count: int
    deferred_session_count: int
    content_digest: str | None


class BatchReleased(TypedDict):
    batch_id: str
    release_id: str
    requested_at_ms: int
    released_at_ms: int
    session_count: int
    event_count: int
    repeat_session_count: int
    content_digest: str | None


ReleaseStatus = Literal["RELEASED", "EMPTY"]


class ReleaseOutcome(TypedDict):
    status: ReleaseStatus
    batch_id: str
    release_id: str
    request_ids: list[str]
    requested_at_ms: int
    answered_at_ms: int
    session_count: int
    event_count: int
    repeat_session_count: int
    unreleasable_session_count: int
    unreleasable_session_ids: list[str]


class ForgetRequested(TypedDict):
    request_id: str
    user_id: str
    requested_at_ms: int


class ForgetMarker(TypedDict):
    request_id: str
    user_id: str
    requested_at_ms: int


class PartitionForgot(TypedDict):
    request_id: str
    partition: int
    session_count: int


class DeadLetter(TypedDict):
    reason: str
    detail: str
    session_id: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    value: bytes | None
    dead_lettered_at_ms: int


# The stream worker's table values.


@final  # so ``"is_new" in event`` tells it from a batch's event
class StoredEvent(TypedDict):
    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: str | None
    received_at_ms: int
    offset: int


class EventPiece(TypedDict):
    session_id: str
    index: int
    events: list[StoredEvent]


class Registration(TypedDict):
    search_query: str
    search_results: list[SearchResult]
    search_meta: str | None
    user_id: str | None
    created_at: int
    received_at_ms: int
    offset: int
    payload_filter: str | None
    sort_by: SortBy | None


class ReleaseMark(TypedDict):
    batch_id: str
    event_count: int
    previous_batch_id: str | None
    previous_event_count: int


class SessionEntry(TypedDict):
    session_id: str
    partition: int
    registered_offset: int | None
    registered_at_ms: int
    irrelevant_offset: int | None
    waiting_since_ms: int | None
    event_count: int
    piece_count: int
    last_piece_bytes: int
    last_event_offset: int | None
    last_active_ms: int
    released: ReleaseMark | None


class PendingCut(TypedDict):
    batch_id: str
    release_id: str
    requested_at_ms: int
    min_idle_seconds: int
    sessions_offset: int | None
    events_offset: int | None


class CompletedCut(TypedDict):
    batch_id: str
    release_id: str
    requested_at_ms: int
    sessions_offset: int
    events_offset: int
    session_count: int
    event_count: int
    repeat_session_count: int
    deferred_session_count: int
    content_digest: str | None


class PartitionReleases(TypedDict):
    partition: int
    pending: list[PendingCut]
    releases: list[CompletedCut]


class SourceOffsets(TypedDict):
    sessions_offset: int
    events_offset: int


def event_item(event: Mapping[str, Any]) -> EventItem:
    """The fields every event record shares, copied from any of them (a SessionEvents
    item, a SessionEvent, a StoredEvent, a batch document's event): the one place they
    are listed."""
    return {
        "event_id": event["event_id"],
        "object_id": event["object_id"],
        "event_type": event["event_type"],
        "created_at": event["created_at"],
        "meta": event["meta"],
    }

"""Release cuts: which sessions of a partition go into a batch, decided from offsets alone.

The release coordinator writes a ReleaseMarker into every partition of both the sessions
and the events topic. In a partition, what lies before the marker is acknowledged before
the release; what lies after waits for the next one. Once a partition's owner has read
the marker on both topics, it knows the cut exactly:

- sessions registered at an offset below the sessions cut,
- with their events at offsets below the events cut,
- that were registered since the previous cut, or got events since it (a repeat: the
  whole history goes again), or were left for later by ``min_idle_seconds``.

Everything here is a pure function of the table entries and the partition's state (a
``PartitionState`` record), so replaying a marker after a crash yields the same sessions,
numbered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bson import ObjectId

    from stream_app.join import SessionState

PartitionState = dict[str, Any]
Cut = dict[str, Any]
"""A ``PartitionCut`` record: the offsets and inputs of one release in one partition."""

SESSIONS = "sessions"
EVENTS = "events"


class MarkerOutcome(Enum):
    WAITING = "waiting"  # the marker of the other topic is still to come
    COMPLETE = "complete"  # both seen: write this partition's part
    REPLAY = "replay"  # already done: write the same part again (idempotent)
    STALE = "stale"  # older than every release remembered: ignore


def new_partition_state(partition: int) -> PartitionState:
    return {"partition": partition, "pending": [], "deferred": [], "releases": []}


def on_marker(
    state: PartitionState, marker: dict[str, Any], topic: str, offset: int
) -> tuple[MarkerOutcome, Cut | None]:
    """Apply a ReleaseMarker read on ``topic`` (SESSIONS or EVENTS) at ``offset``.

    Mutates ``state`` (the caller stores it back). The cut comes with COMPLETE and REPLAY
    only; on COMPLETE it is not yet in the history: :func:`record_release` puts it there
    once the part is written.
    """
    batch_id = marker["batch_id"]
    for cut in state["releases"]:
        if cut["batch_id"] == batch_id:
            return MarkerOutcome.REPLAY, cut
    pending = next((p for p in state["pending"] if p["batch_id"] == batch_id), None)
    if pending is None:
        releases = state["releases"]
        if releases and marker["requested_at_ms"] < releases[0]["requested_at_ms"]:
            return MarkerOutcome.STALE, None
        pending = {
            "batch_id": batch_id,
            "release_id": marker["release_id"],
            "requested_at_ms": marker["requested_at_ms"],
            "min_idle_seconds": marker["min_idle_seconds"],
            "sessions_offset": None,
            "events_offset": None,
        }
        state["pending"].append(pending)
    key = f"{topic}_offset"
    if pending[key] is None:  # a repeated marker keeps the first position
        pending[key] = offset
    if pending["sessions_offset"] is None or pending["events_offset"] is None:
        return MarkerOutcome.WAITING, None
    previous = state["releases"][-1] if state["releases"] else None
    return MarkerOutcome.COMPLETE, {
        "batch_id": batch_id,
        "release_id": pending["release_id"],
        "requested_at_ms": pending["requested_at_ms"],
        "min_idle_seconds": pending["min_idle_seconds"],
        "sessions_offset": pending["sessions_offset"],
        "events_offset": pending["events_offset"],
        "previous_sessions_offset": previous["sessions_offset"] if previous else 0,
        "previous_events_offset": previous["events_offset"] if previous else 0,
        "deferred_before": list(state["deferred"]),
    }


@dataclass(frozen=True, slots=True)
class Included:
    state: SessionState
    events: list[dict[str, Any]]
    is_repeat: bool


@dataclass(slots=True)
class Selection:
    """The sessions of one partition's part of a batch."""

    included: list[Included] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        return sum(len(item.events) for item in self.included)

    @property
    def repeat_count(self) -> int:
        return sum(item.is_repeat for item in self.included)


def select(cut: Cut, sessions: Iterable[SessionState]) -> Selection:
    """The sessions of the partition that go into the release of ``cut``, in
    registration order, and those left for the next release by ``min_idle_seconds``."""
    deferred_before = {d["session_id"]: d["released_before"] for d in cut["deferred_before"]}
    sessions_cut, events_cut = cut["sessions_offset"], cut["events_offset"]
    previous_sessions_cut = cut["previous_sessions_offset"]
    previous_events_cut = cut["previous_events_offset"]
    idle_ms = cut["min_idle_seconds"] * 1000
    selection = Selection()
    for state in sessions:
        registration = state["registration"]
        if registration is None or registration["offset"] >= sessions_cut:
            continue
        events = _before(state["events"], events_cut)
        session_id = state["session_id"]
        if registration["offset"] >= previous_sessions_cut:
            released_before = False
        elif session_id in deferred_before:
            released_before = deferred_before[session_id]
        elif events and events[-1]["offset"] >= previous_events_cut:
            released_before = True
        else:
            continue  # released already, nothing new since
        if idle_ms:
            last_active_ms = max(
                registration["received_at_ms"], events[-1]["received_at_ms"] if events else 0
            )
            if cut["requested_at_ms"] - last_active_ms < idle_ms:
                selection.deferred.append(
                    {"session_id": session_id, "released_before": released_before}
                )
                continue
        selection.included.append(Included(state, events, released_before))
    selection.included.sort(key=lambda item: item.state["registration"]["offset"])
    selection.deferred.sort(key=lambda d: d["session_id"])
    return selection


def _before(events: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """The events below ``offset``: a prefix, since events are appended in offset order."""
    end = len(events)
    while end and events[end - 1]["offset"] >= offset:
        end -= 1
    return events if end == len(events) else events[:end]


def record_release(
    state: PartitionState, cut: Cut, selection: Selection, history: int
) -> PartitionState:
    """The partition's state once its part of ``cut`` is written."""
    state["pending"] = [p for p in state["pending"] if p["batch_id"] != cut["batch_id"]]
    state["releases"] = [*state["releases"], cut][-history:]
    state["deferred"] = selection.deferred
    return state


def batch_session_document(
    batch_id: ObjectId, cut: Cut, item: Included, number: int
) -> dict[str, Any]:
    """The MongoDB document of one session in a batch (see clickstream.batch_store)."""
    state, registration = item.state, item.state["registration"]
    irrelevant_offset = state["irrelevant_offset"]
    return {
        "_id": f"{batch_id}:{state['session_id']}",
        "batch_id": batch_id,
        "session_number": number,
        "session_id": state["session_id"],
        "partition": state["partition"],
        "search_query": registration["search_query"],
        "search_results": registration["search_results"],
        "search_meta": registration["search_meta"],
        "user_id": registration["user_id"],
        "created_at": registration["created_at"],
        "is_irrelevant": irrelevant_offset is not None
        and irrelevant_offset < cut["sessions_offset"],
        "is_repeat": item.is_repeat,
        "event_count": len(item.events),
        "events": [
            {
                "event_id": e["event_id"],
                "object_id": e["object_id"],
                "event_type": e["event_type"],
                "created_at": e["created_at"],
                "meta": e["meta"],
                "received_at_ms": e["received_at_ms"],
            }
            for e in item.events
        ],
    }


def session_number(rank: int, partition: int, partition_count: int) -> int:
    """Numbers unique within a batch, assigned by each partition alone: partition p
    numbers its sessions p+1, p+1+N, p+1+2N, ... in registration order."""
    return rank * partition_count + partition + 1

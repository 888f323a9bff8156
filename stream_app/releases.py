"""Release cuts: which sessions of a partition go into a batch, decided from offsets alone.

The release coordinator writes a ReleaseMarker into every partition of both the sessions
and the events topic. In a partition, what lies before the marker is acknowledged before
the release; what lies after waits for the next one. Once a partition's owner has read
the marker on both topics, it knows the cut exactly:

- sessions registered at an offset below the sessions cut,
- with their events at offsets below the events cut (a prefix of the session's events),
- that were never released, or have events beyond those of their last batch (a repeat:
  the whole history goes again, the new events marked as such).

Sessions active more recently than ``min_idle_seconds`` are left untouched, so the next
release finds them as they are. Each session's entry remembers its last batch (and the
one before, so that a replayed marker writes the very same part), and each partition
remembers a few recent releases with the counts of its part (to report it again if the
coordinator asks): state whose size does not grow with the number of releases.

Everything here is a pure function of the table values: replaying a marker after a crash
yields the same sessions, numbered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal, TypedDict

from batches.batch import PartCounts as PartCounts  # noqa: TC001
from batches.documents import SessionCopy

# The partition table's values, re-exported (other modules name them releases.CompletedCut).
from schemas.records import CompletedCut as CompletedCut  # noqa: TC001
from schemas.records import PartitionReleases as PartitionReleases  # noqa: TC001
from stream_app import join

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from bson import ObjectId

    from schemas.records import (
        PendingCut,
        Registration,
        ReleaseMarker,
        SessionEntry,
        StoredEvent,
    )
    from stream_app.join import EventPiece


class Cut(TypedDict):
    """The offsets and inputs of one release in one partition: a ``PendingCut`` once the
    marker was read on both topics (both offsets known)."""

    batch_id: str
    release_id: str
    requested_at_ms: int
    min_idle_seconds: int
    sessions_offset: int
    events_offset: int


SESSIONS = "sessions"
EVENTS = "events"
# Where a pending cut keeps the marker's offset on each topic.
_OFFSET_KEYS: dict[str, Literal["sessions_offset", "events_offset"]] = {
    SESSIONS: "sessions_offset",
    EVENTS: "events_offset",
}


class MarkerOutcome(Enum):
    WAITING = "waiting"  # the marker of the other topic is still to come
    COMPLETE = "complete"  # both seen: write this partition's part
    REPLAY = "replay"  # already done: report the same part again
    STALE = "stale"  # older than every release remembered: ignore


def new_partition_state(partition: int) -> PartitionReleases:
    return {"partition": partition, "pending": [], "releases": []}


def on_marker(
    state: PartitionReleases, marker: ReleaseMarker, topic: str, offset: int
) -> tuple[MarkerOutcome, PartitionReleases, Cut | CompletedCut | None]:
    """Apply a ReleaseMarker read on ``topic`` (SESSIONS or EVENTS) at ``offset``.

    Returns the outcome, the partition's state to write (a new value; ``state`` is left as
    it was) and: on COMPLETE the cut, which :func:`record_release` puts in the history once
    the part is written; on REPLAY the completed release, whose counts are reported again.
    """
    batch_id = marker["batch_id"]
    for completed in state["releases"]:
        if completed["batch_id"] == batch_id:
            return MarkerOutcome.REPLAY, state, completed
    pending: PendingCut | None = next(
        (p for p in state["pending"] if p["batch_id"] == batch_id), None
    )
    if pending is None:
        history = state["releases"]
        if history and marker["requested_at_ms"] < history[0]["requested_at_ms"]:
            return MarkerOutcome.STALE, state, None
        pending = {
            "batch_id": batch_id,
            "release_id": marker["release_id"],
            "requested_at_ms": marker["requested_at_ms"],
            "min_idle_seconds": marker["min_idle_seconds"],
            "sessions_offset": None,
            "events_offset": None,
        }
    key = _OFFSET_KEYS[topic]
    if pending[key] is None:  # a repeated marker keeps the first position
        pending = pending.copy()
        pending[key] = offset
    others = [p for p in state["pending"] if p["batch_id"] != batch_id]
    state = {**state, "pending": [*others, pending]}
    sessions_offset, events_offset = pending["sessions_offset"], pending["events_offset"]
    if sessions_offset is None or events_offset is None:
        return MarkerOutcome.WAITING, state, None
    cut: Cut = {**pending, "sessions_offset": sessions_offset, "events_offset": events_offset}
    return MarkerOutcome.COMPLETE, state, cut


@dataclass(frozen=True, slots=True)
class Included:
    """A session of a partition's part: its first ``event_count`` events go into the batch;
    those beyond ``previous_event_count`` are new since its previous batch, if any."""

    entry: SessionEntry
    event_count: int
    previous_batch_id: str | None
    previous_event_count: int

    @property
    def is_repeat(self) -> bool:
        return self.previous_batch_id is not None

    @property
    def session_id(self) -> str:
        return self.entry["session_id"]

    @property
    def registered_offset(self) -> int:
        """Where it was registered: :func:`select` includes only registered sessions."""
        offset = self.entry["registered_offset"]
        if offset is None:
            raise TypeError(f"session {self.entry['session_id']} in a release is not registered")
        return offset


@dataclass(slots=True)
class Selection:
    """The sessions of one partition's part of a batch."""

    included: list[Included] = field(default_factory=list)
    deferred: int = 0

    @property
    def repeat_count(self) -> int:
        return sum(item.is_repeat for item in self.included)


def select(
    cut: Cut,
    entries: Iterable[SessionEntry],
    pieces_of: Callable[[str], Callable[[int], EventPiece | None]],
) -> Selection:
    """The sessions of the partition that go into the release of ``cut``, in registration
    order; ``pieces_of(session_id)`` reads a session's pieces by index.

    Only what lies below the cut decides, never how far past it the worker has read: a
    marker replayed after a crash selects the very same sessions (and numbers them the same).
    """
    sessions_cut, events_cut = cut["sessions_offset"], cut["events_offset"]
    idle_ms = cut["min_idle_seconds"] * 1000
    selection = Selection()
    for entry in entries:
        registered = entry["registered_offset"]
        if registered is None or registered >= sessions_cut:
            continue
        released = entry["released"]
        if released is not None and released["batch_id"] == cut["batch_id"]:
            # In this batch already (a replay after a crash): the same part again.
            selection.included.append(
                Included(
                    entry,
                    released["event_count"],
                    released["previous_batch_id"],
                    released["previous_event_count"],
                )
            )
            continue
        read_piece = pieces_of(entry["session_id"])
        count = join.count_before(entry, read_piece, events_cut)
        if released is not None and count <= released["event_count"]:
            continue  # released already, nothing new since
        if idle_ms and (
            cut["requested_at_ms"] - join.last_active_before(entry, read_piece, events_cut)
            < idle_ms
        ):
            selection.deferred += 1
            continue
        selection.included.append(
            Included(
                entry,
                count,
                released["batch_id"] if released else None,
                released["event_count"] if released else 0,
            )
        )
    selection.included.sort(key=lambda item: (item.registered_offset, item.session_id))
    return selection


def mark_released(cut: Cut, item: Included) -> SessionEntry | None:
    """The session's entry once its part of ``cut`` is written; None if it says so already."""
    released = item.entry["released"]
    if released is not None and released["batch_id"] == cut["batch_id"]:
        return None
    return join.marked_released(
        item.entry,
        cut["batch_id"],
        item.event_count,
        item.previous_batch_id,
        item.previous_event_count,
    )


def record_release(
    state: PartitionReleases, cut: Cut, counts: PartCounts, history: int
) -> PartitionReleases:
    """The partition's state once its part of ``cut`` is written and reported."""
    completed: CompletedCut = {
        "batch_id": cut["batch_id"],
        "release_id": cut["release_id"],
        "requested_at_ms": cut["requested_at_ms"],
        "sessions_offset": cut["sessions_offset"],
        "events_offset": cut["events_offset"],
        **counts,
    }
    return {
        **state,
        "pending": [p for p in state["pending"] if p["batch_id"] != cut["batch_id"]],
        "releases": [*state["releases"], completed][-history:],
    }


def session_copy(
    batch_id: ObjectId,
    cut: Cut,
    item: Included,
    number: int,
    registration: Registration,
    events: Iterable[StoredEvent],
) -> SessionCopy:
    """What goes into the batch of one session (see ``batches.documents``): ``events`` are
    the session's first ``item.event_count`` events."""
    entry = item.entry
    irrelevant_offset = entry["irrelevant_offset"]
    return SessionCopy(
        batch_id=batch_id,
        session_number=number,
        session_id=entry["session_id"],
        partition=entry["partition"],
        registration=registration,
        is_irrelevant=irrelevant_offset is not None and irrelevant_offset < cut["sessions_offset"],
        previous_batch_id=item.previous_batch_id,
        event_count=item.event_count,
        new_from=item.previous_event_count if item.is_repeat else 0,
        events=events,
    )


def session_number(rank: int, partition: int, partition_count: int) -> int:
    """Numbers unique within a batch, assigned by each partition alone: partition p
    numbers its sessions p+1, p+1+N, p+1+2N, ... in registration order."""
    return rank * partition_count + partition + 1

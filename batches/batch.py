"""A batch document of the ``batches`` collection, as the API shows it, and its statuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict, cast

from bson import ObjectId

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.records import CompletedCut, PartitionReleased

RELEASING = "releasing"
RELEASED = "released"
EMPTY = "empty"
# A released batch past CLICKSTREAM_BATCH_RETENTION_DAYS (``batches.expiry``): its
# sessions are being deleted, then are gone.
EXPIRING = "expiring"
EXPIRED = "expired"
GONE = (EXPIRING, EXPIRED)
# An empty release leaves no batch: its document is kept this long for the waiting
# requests to read the outcome, without holding the release_id.
EMPTY_RELEASE_TTL_SECONDS = 3600


class PartCounts(TypedDict):
    """What a partition's part of a batch holds, as it reported it (``PartitionReleased``)."""

    session_count: int
    event_count: int
    repeat_session_count: int
    deferred_session_count: int
    content_digest: str | None
    """The part's digest as stored (``batches.digest``)."""


def part_counts(source: CompletedCut | PartitionReleased) -> PartCounts:
    """The counts of a part, from the partition's record of it or its report."""
    return {
        "session_count": source["session_count"],
        "event_count": source["event_count"],
        "repeat_session_count": source["repeat_session_count"],
        "deferred_session_count": source["deferred_session_count"],
        "content_digest": source["content_digest"],
    }


class PartDocument(PartCounts):
    """A partition's part in a batch document (``partitions.<n>``): its counts and the
    offset on the releases topic of the report that recorded it."""

    offset: int


class BatchDocument(TypedDict):
    """``batches``: one release (``_id`` is its ``batch_id``). Fields marked not required
    are absent until the batch gets that far."""

    _id: ObjectId
    release_id: NotRequired[str]
    """Removed (kept as ``empty_release_id``) when there was nothing to release."""
    empty_release_id: NotRequired[str]
    emptied_at: NotRequired[datetime]
    status: str
    requested_at_ms: int
    released_at_ms: NotRequired[int]
    expired_at_ms: NotRequired[int]
    min_idle_seconds: int
    partition_count: int
    partitions: dict[str, PartDocument]
    """By partition number (a string: a BSON key)."""
    request_ids: list[str]
    markers_sent_at_ms: int
    heal_count: int
    unreleasable: NotRequired[dict[str, list[str]]]
    content_digest: NotRequired[str | None]
    erased_session_count: NotRequired[int]


class PublicBatch(TypedDict):
    """A :class:`Batch` as the release and batch endpoints answer; the counts and the
    digest are None until the batch is released."""

    batch_id: str
    release_id: str
    status: str
    requested_at: int
    released_at: int | None
    session_count: int | None
    event_count: int | None
    repeat_session_count: int | None
    partitions_done: int
    partition_count: int
    done_partitions: list[int]
    waiting_partitions: list[int]
    heal_count: int
    unreleasable_session_count: int
    unreleasable_session_ids: list[str]
    content_digest: str | None
    erased_session_count: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch document, as the API shows it."""

    batch_id: str
    release_id: str
    status: str
    requested_at_ms: int
    released_at_ms: int | None
    min_idle_seconds: int
    partition_count: int
    partitions: dict[str, PartDocument]
    request_ids: tuple[str, ...] = ()
    markers_sent_at_ms: int = 0
    heal_count: int = 0
    # Per partition, the sessions MongoDB refused to store (not in the batch).
    unreleasable: dict[str, list[str]] | None = None
    # SHA-256 of the released content (``batches.digest``); None until released.
    content_digest: str | None = None
    # Sessions taken out since by erasures (``batches.erasures``): the counts are of the rest.
    erased_session_count: int = 0

    @classmethod
    def from_document(cls, doc: BatchDocument) -> Batch:
        return cls(
            batch_id=str(doc["_id"]),
            release_id=doc.get("release_id") or doc.get("empty_release_id", ""),
            status=doc["status"],
            requested_at_ms=doc["requested_at_ms"],
            released_at_ms=doc.get("released_at_ms"),
            min_idle_seconds=doc["min_idle_seconds"],
            partition_count=doc["partition_count"],
            partitions=doc["partitions"],
            request_ids=tuple(doc["request_ids"]),
            markers_sent_at_ms=doc["markers_sent_at_ms"],
            heal_count=doc["heal_count"],
            unreleasable=doc.get("unreleasable"),
            content_digest=doc.get("content_digest"),
            erased_session_count=doc.get("erased_session_count", 0),
        )

    @property
    def expired(self) -> bool:
        """Expiring or expired: its sessions are (being) deleted."""
        return self.status in GONE

    @property
    def part_digests(self) -> dict[int, str]:
        """Each partition's part digest, once all are known (empty otherwise)."""
        digests = {int(p): part.get("content_digest") for p, part in self.partitions.items()}
        if not self.complete or None in digests.values():
            return {}
        return cast("dict[int, str]", digests)

    @property
    def unreleasable_session_ids(self) -> list[str]:
        """Sessions of the release that could not be stored, partition by partition."""
        parts = self.unreleasable or {}
        return [sid for partition in sorted(parts, key=int) for sid in parts[partition]]

    def total(self, name: Literal["session_count", "event_count", "repeat_session_count"]) -> int:
        return sum(part[name] for part in self.partitions.values())

    @property
    def complete(self) -> bool:
        return len(self.partitions) == self.partition_count

    @property
    def done_partitions(self) -> list[int]:
        """The partitions that have written their part and reported it."""
        return sorted(int(p) for p in self.partitions)

    @property
    def waiting_partitions(self) -> list[int]:
        """The partitions the batch still waits for."""
        done = set(self.done_partitions)
        return [p for p in range(self.partition_count) if p not in done]

    def public(self) -> PublicBatch:
        """The answer of the release and batch endpoints."""
        released = self.status == RELEASED or self.expired
        return {
            "batch_id": self.batch_id,
            "release_id": self.release_id,
            "status": self.status,
            "requested_at": self.requested_at_ms // 1000,
            "released_at": self.released_at_ms // 1000 if self.released_at_ms else None,
            "session_count": self.total("session_count") if released else None,
            "event_count": self.total("event_count") if released else None,
            "repeat_session_count": self.total("repeat_session_count") if released else None,
            "partitions_done": len(self.partitions),
            "partition_count": self.partition_count,
            "done_partitions": self.done_partitions,
            "waiting_partitions": self.waiting_partitions,
            "heal_count": self.heal_count,
            "unreleasable_session_count": len(self.unreleasable_session_ids),
            "unreleasable_session_ids": self.unreleasable_session_ids,
            "content_digest": self.content_digest if released else None,
            "erased_session_count": self.erased_session_count,
        }


def parse_batch_id(batch_id: str) -> ObjectId | None:
    """The ObjectId of a batch id, or None if it is not 24 hex characters."""
    return ObjectId(batch_id) if ObjectId.is_valid(batch_id) and len(batch_id) == 24 else None

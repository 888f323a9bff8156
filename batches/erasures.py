"""Erasing a user: their sessions removed from the released batches, and the receipt.

Two collections beside the batches:

- ``erasures``: one receipt per forget request (``_id``: its ``request_id``): its status,
  the partitions that removed the user's sessions from their state (and how many), the
  sessions removed from each batch, and when. The user id is kept only while the erasure
  runs, and removed with the rest of the user's data when it is done.
- ``forgotten_sessions``: the ids of the sessions erased (nothing else), for
  ``FORGOTTEN_SESSION_DAYS``: events of them still in flight when the erasure ran are
  dropped rather than dead-lettered, and a retired session is not brought back from a
  copy about to be erased.

A batch that loses sessions keeps its counts and its content digest true: each part that
lost some has its counts lowered and its digest computed again from what MongoDB holds
(and so the batch's, if it has one); ``erased_session_count`` says how many went.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NotRequired, TypedDict, cast

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from batches.digest import batch_digest

if TYPE_CHECKING:
    from bson import ObjectId
    from pymongo.collection import Collection

    from batches.documents import BatchSessionDocument
    from batches.store import BatchStore

logger = logging.getLogger(__name__)

FORGETTING = "forgetting"
FORGOTTEN = "forgotten"
#: How long the ids of erased sessions are kept (their late events are dropped meanwhile).
FORGOTTEN_SESSION_DAYS = 7


class ErasurePart(TypedDict):
    """A partition's report: how many sessions it removed from its state, and the offset
    of the report on the releases topic."""

    session_count: int
    offset: int


class ErasureDocument(TypedDict):
    """``erasures``: a forget request's receipt (``_id`` is its ``request_id``)."""

    _id: str
    status: str
    user_id: NotRequired[str]
    """Removed once the erasure is done."""
    requested_at_ms: int
    partition_count: int
    partitions: dict[str, ErasurePart]
    batch_session_counts: dict[str, int]
    done_at_ms: NotRequired[int]


class ForgottenSessionDocument(TypedDict):
    """``forgotten_sessions``: a session erased (``_id`` is its ``session_id``)."""

    _id: str
    request_id: str
    forgotten_at: datetime


class PublicErasure(TypedDict):
    """An :class:`Erasure` as the forget endpoints answer."""

    request_id: str
    status: str
    requested_at: int
    done_at: int | None
    partitions_done: int
    partition_count: int
    table_session_count: int
    batch_session_counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Erasure:
    """A forget request's receipt."""

    request_id: str
    status: str
    requested_at_ms: int
    partition_count: int
    partitions: dict[str, ErasurePart]
    batch_session_counts: dict[str, int] = field(default_factory=dict)
    done_at_ms: int | None = None
    user_id: str | None = None
    """Only while the erasure runs."""

    @classmethod
    def from_document(cls, doc: ErasureDocument) -> Erasure:
        return cls(
            request_id=doc["_id"],
            status=doc["status"],
            requested_at_ms=doc["requested_at_ms"],
            partition_count=doc["partition_count"],
            partitions=doc["partitions"],
            batch_session_counts=doc["batch_session_counts"],
            done_at_ms=doc.get("done_at_ms"),
            user_id=doc.get("user_id"),
        )

    @property
    def complete(self) -> bool:
        """Every partition removed the user's sessions from its state."""
        return len(self.partitions) == self.partition_count

    def public(self) -> PublicErasure:
        """The answer of the forget endpoints."""
        return {
            "request_id": self.request_id,
            "status": self.status,
            "requested_at": self.requested_at_ms // 1000,
            "done_at": self.done_at_ms // 1000 if self.done_at_ms else None,
            "partitions_done": len(self.partitions),
            "partition_count": self.partition_count,
            "table_session_count": sum(p["session_count"] for p in self.partitions.values()),
            "batch_session_counts": dict(sorted(self.batch_session_counts.items())),
        }


class ErasureStore:
    """Receipts of erasures, and erasing released sessions.

    Args:
        batches: the batch store, whose database and collections are shared.
    """

    def __init__(self, batches: BatchStore) -> None:
        self._batches = batches
        database = batches.batches.database
        erasures = database.get_collection("erasures")
        forgotten = database.get_collection("forgotten_sessions")
        self.erasures = cast("Collection[ErasureDocument]", erasures)
        self.forgotten = cast("Collection[ForgottenSessionDocument]", forgotten)

    def ensure_indexes(self) -> None:
        self.forgotten.create_index(
            "forgotten_at", expireAfterSeconds=FORGOTTEN_SESSION_DAYS * 24 * 3600
        )
        self._batches.sessions.create_index([("user_id", ASCENDING)])

    # -- the release coordinator --------------------------------------------------------

    def open(
        self, request_id: str, user_id: str, requested_at_ms: int, partition_count: int
    ) -> tuple[Erasure, bool]:
        """The erasure of ``request_id``, created if new; whether it was created now."""
        doc: ErasureDocument = {
            "_id": request_id,
            "status": FORGETTING,
            "user_id": user_id,
            "requested_at_ms": requested_at_ms,
            "partition_count": partition_count,
            "partitions": {},
            "batch_session_counts": {},
        }
        try:
            self.erasures.insert_one(doc)
        except DuplicateKeyError:
            existing = self.erasures.find_one({"_id": request_id})
            if existing is None:
                raise
            return Erasure.from_document(existing), False
        # From now on no released copy of the user's sessions comes back to the tables.
        released = self._batches.sessions.distinct("session_id", {"user_id": user_id})
        self.mark_forgotten(released, request_id)
        return Erasure.from_document(doc), True

    def record_partition(
        self, request_id: str, partition: int, session_count: int, offset: int
    ) -> Erasure | None:
        """Record a partition's report (the first wins) and return the erasure."""
        doc = self.erasures.find_one_and_update(
            {"_id": request_id, f"partitions.{partition}": {"$exists": False}},
            {
                "$set": {
                    f"partitions.{partition}": {"session_count": session_count, "offset": offset}
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = self.erasures.find_one({"_id": request_id})
        return Erasure.from_document(doc) if doc is not None else None

    def complete(self, erasure: Erasure, done_at_ms: int) -> Erasure | None:
        """Erase the user's released sessions, then close the receipt (without the user
        id). Done again after a crash, it erases what is left."""
        if erasure.user_id is not None:
            self._erase_released(erasure.request_id, erasure.user_id)
        doc = self.erasures.find_one_and_update(
            {"_id": erasure.request_id, "status": FORGETTING},
            {"$set": {"status": FORGOTTEN, "done_at_ms": done_at_ms}, "$unset": {"user_id": ""}},
            return_document=ReturnDocument.AFTER,
        )
        return Erasure.from_document(doc) if doc is not None else self.get(erasure.request_id)

    def _erase_released(self, request_id: str, user_id: str) -> None:
        """Remove every released copy of the user's sessions, part by part, keeping each
        batch's counts and digests true."""
        store = self._batches
        # Heads projected to what erasing reads of them.
        parts: dict[tuple[ObjectId, int], list[BatchSessionDocument]] = defaultdict(list)
        for head in store.sessions.find(
            {"user_id": user_id},
            {"batch_id": 1, "partition": 1, "session_number": 1, "event_count": 1, "is_repeat": 1},
        ):
            parts[(head["batch_id"], head["partition"])].append(head)
        for (batch_id, partition), heads in parts.items():
            numbers = [head["session_number"] for head in heads]
            store.event_chunks.delete_many(
                {"batch_id": batch_id, "session_number": {"$in": numbers}}
            )
            store.sessions.delete_many({"_id": {"$in": [head["_id"] for head in heads]}})
            self._part_erased(batch_id, partition, heads)
            self.erasures.update_one(
                {"_id": request_id}, {"$inc": {f"batch_session_counts.{batch_id}": len(heads)}}
            )
            logger.info(
                "sessions erased from a batch batch=%s partition=%s sessions=%s request=%s",
                batch_id,
                partition,
                len(heads),
                request_id,
            )

    def _part_erased(
        self, batch_id: ObjectId, partition: int, heads: list[BatchSessionDocument]
    ) -> None:
        """Lower the part's counts, and compute its digest again (the batch's too), in one
        update of the batch."""
        store = self._batches
        batch = store.get(batch_id)
        if batch is None:
            return
        path = f"partitions.{partition}"
        part = batch.partitions.get(str(partition))
        update: dict[str, dict[str, object]] = {"$inc": {"erased_session_count": len(heads)}}
        if part is None:  # its report is not in yet: it will count what is left
            store.batches.update_one({"_id": batch_id}, update)
            return
        update["$inc"] |= {
            f"{path}.session_count": -len(heads),
            f"{path}.event_count": -sum(head["event_count"] for head in heads),
            f"{path}.repeat_session_count": -sum(bool(head["is_repeat"]) for head in heads),
        }
        if part.get("content_digest") is not None:
            digest = store.part_digest(batch_id, partition)
            update["$set"] = {f"{path}.content_digest": digest}
            if batch.content_digest is not None:
                parts = {**batch.part_digests, partition: digest}
                update["$set"]["content_digest"] = batch_digest(parts)
        store.batches.update_one({"_id": batch_id}, update)

    # -- partition owners ---------------------------------------------------------------

    def mark_forgotten(self, session_ids: list[str], request_id: str) -> None:
        """Note the sessions as erased (idempotent)."""
        if not session_ids:
            return
        now = datetime.now(UTC)
        self.forgotten.bulk_write(
            [
                UpdateOne(
                    {"_id": session_id},
                    {"$setOnInsert": {"request_id": request_id, "forgotten_at": now}},
                    upsert=True,
                )
                for session_id in session_ids
            ],
            ordered=False,
        )

    def is_forgotten(self, session_id: str) -> bool:
        return self.forgotten.count_documents({"_id": session_id}, limit=1) > 0

    # -- readers ------------------------------------------------------------------------

    def get(self, request_id: str) -> Erasure | None:
        doc = self.erasures.find_one({"_id": request_id})
        return Erasure.from_document(doc) if doc is not None else None

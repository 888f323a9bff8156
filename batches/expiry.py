"""Batches that expire: released batches older than ``CLICKSTREAM_BATCH_RETENTION_DAYS``
leave MongoDB, a bounded piece of work at a time, unless a follower still needs them.

A batch expires in two steps: ``expiring`` (readers refuse it from then on) while its
sessions and event chunks are deleted page by page, then ``expired``, its document kept
with its ids, counts and digest, so the API can say what became of it.

``batch_holds`` holds one document per follower group that keeps its batches (``batch
follow`` does by default): the release time of the last batch it exported. No batch
released after the slowest holder's is expired, so a follower that stopped for a while
still finds every batch it has not exported. ``clickstream batch unhold GROUP`` lets go of
a follower that will not come back.

Repeats do not depend on expired batches: a session in the worker's tables knows its last
batch from its own state. A session retired from the tables (quiet for
``CLICKSTREAM_SESSION_RETENTION_SECONDS``) is brought back by a late event from its
latest released copy; once that copy has expired, the late event is an orphan.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, TypedDict, cast

from pymongo import ASCENDING

from batches.exceptions import BatchStoreError
from batches.store import EXPIRED, EXPIRING, RELEASED

if TYPE_CHECKING:
    from bson import ObjectId
    from pymongo.collection import Collection

    from batches.store import BatchStore


class HoldDocument(TypedDict):
    """``batch_holds``: a follower that keeps its batches, and what it exported."""

    _id: str
    released_up_to_ms: int


logger = logging.getLogger(__name__)

# Documents deleted per call: each call is short, and a deadline is checked between them.
_DELETE_PAGE = 2000


class BatchHeldError(BatchStoreError):
    """A batch a follower keeping its batches has not exported yet."""


class BatchExpiry:
    """Expires batches and keeps the followers' holds.

    Args:
        store: the batch store, whose database is shared.
    """

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        holds = store.batches.database.get_collection("batch_holds")
        self.holds = cast("Collection[HoldDocument]", holds)

    def ensure_indexes(self) -> None:
        self._store.batches.create_index([("status", ASCENDING), ("released_at_ms", ASCENDING)])

    # -- holds --------------------------------------------------------------------------

    def hold(self, holder: str) -> None:
        """Keep every batch released after what ``holder`` last exported (from now on)."""
        self.holds.update_one(
            {"_id": holder}, {"$setOnInsert": {"released_up_to_ms": 0}}, upsert=True
        )

    def exported(self, holder: str, released_at_ms: int) -> None:
        """``holder`` exported the batch released at ``released_at_ms``."""
        self.holds.update_one(
            {"_id": holder}, {"$max": {"released_up_to_ms": released_at_ms}}, upsert=True
        )

    def unhold(self, holder: str) -> bool:
        """Let go of ``holder``'s hold; whether it had one."""
        return self.holds.delete_one({"_id": holder}).deleted_count > 0

    def list_holds(self) -> dict[str, int]:
        """Each holder and the release time (UTC ms) up to which it exported."""
        return {doc["_id"]: doc["released_up_to_ms"] for doc in self.holds.find()}

    def _held_from_ms(self) -> int | None:
        """Batches released after this are held (None: no holder)."""
        slowest = self.holds.find_one(sort=[("released_up_to_ms", ASCENDING)])
        return None if slowest is None else int(slowest["released_up_to_ms"])

    # -- expiring -----------------------------------------------------------------------

    def expire_due(self, released_before_ms: int, budget_seconds: float) -> int:
        """Expire batches released before ``released_before_ms`` and held by no one, for
        about ``budget_seconds``; the batches that finished expiring."""
        deadline = time.monotonic() + budget_seconds
        held_from = self._held_from_ms()
        bound = released_before_ms if held_from is None else min(released_before_ms, held_from + 1)
        done = 0
        while time.monotonic() < deadline:
            doc = self._store.batches.find_one(
                {"status": {"$in": [EXPIRING, RELEASED]}, "released_at_ms": {"$lt": bound}},
                {"_id": 1},
                sort=[("status", ASCENDING), ("released_at_ms", ASCENDING)],
            )
            if doc is None or not self._expire(doc["_id"], deadline):
                break
            done += 1
        return done

    def delete(self, batch_id: ObjectId, *, force: bool = False) -> None:
        """Expire one released batch now (``clickstream batch delete``); refused for a batch
        still being written, or one a holder has not exported (unless ``force``)."""
        batch = self._store.get(batch_id)
        if batch is None:
            raise BatchStoreError(f"no batch {batch_id}")
        if batch.status != RELEASED and not batch.expired:
            raise BatchStoreError(f"batch {batch_id} is {batch.status}: not released")
        waiting = [
            holder
            for holder, up_to in self.list_holds().items()
            if batch.released_at_ms is not None and up_to < batch.released_at_ms
        ]
        if waiting and not force:
            raise BatchHeldError(
                f"batch {batch_id} is not exported yet by {', '.join(sorted(waiting))} "
                "(batch follow keeps its batches): --force to delete it anyway"
            )
        self._expire(batch_id, None)

    def _expire(self, batch_id: ObjectId, deadline: float | None) -> bool:
        """Delete the batch's sessions (until ``deadline``); whether it is expired now."""
        store = self._store
        store.batches.update_one(
            {"_id": batch_id, "status": RELEASED}, {"$set": {"status": EXPIRING}}
        )
        for collection in (store.event_chunks, store.sessions):
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                ids = [
                    doc["_id"]
                    for doc in collection.find({"batch_id": batch_id}, {"_id": 1}).limit(
                        _DELETE_PAGE
                    )
                ]
                if not ids:
                    break
                collection.delete_many({"_id": {"$in": ids}})
        store.batches.update_one(
            {"_id": batch_id, "status": EXPIRING},
            {"$set": {"status": EXPIRED, "expired_at_ms": int(time.time() * 1000)}},
        )
        logger.info("batch expired batch=%s", batch_id)
        return True

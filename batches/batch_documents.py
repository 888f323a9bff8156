"""The ``batches`` collection: one document per release (see ``store``), created, completed
and read here; ``_id`` is the ``batch_id``, a unique index on ``release_id``.

Every write is idempotent (upserts on deterministic ids, first-write-wins updates).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from batches.batch import EMPTY, RELEASED, RELEASING, Batch, BatchDocument, PartCounts, PartDocument
from batches.digest import batch_digest
from clickstream.clock import now_ms

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.collection import Collection

    from batches.documents import BatchSessionDocument, EventChunkDocument


class BatchDocuments:
    """Holds the batch collections; reads and writes the batch documents.

    Args:
        client: a pymongo client (thread-safe; share one per process).
        database: ``CLICKSTREAM_MONGODB_DATABASE``.
    """

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        self.client = client
        # What a batch says was written stays written through a primary's failover, and
        # reads never show what a failover could roll back.
        db = client.get_database(
            database,
            write_concern=WriteConcern(w="majority", j=True),
            read_concern=ReadConcern("majority"),
        )
        # What each collection holds (pymongo reads them as plain dicts).
        self.batches = cast("Collection[BatchDocument]", db["batches"])
        self.sessions = cast("Collection[BatchSessionDocument]", db["batch_sessions"])
        self.event_chunks = cast("Collection[EventChunkDocument]", db["batch_session_events"])

    # -- the release coordinator --------------------------------------------------------

    def open_release(
        self,
        *,
        batch_id: ObjectId,
        release_id: str,
        request_id: str,
        min_idle_seconds: int,
        requested_at_ms: int,
        partition_count: int,
    ) -> tuple[Batch, bool]:
        """The batch of ``release_id``, created with ``batch_id`` if there is none.

        Returns the batch and whether it is new (or was created by this same request
        before a restart). ``request_id`` is recorded so the request can find its answer.
        """
        existing = self.batches.find_one_and_update(
            {"release_id": release_id},
            {"$addToSet": {"request_ids": request_id}},
            return_document=ReturnDocument.AFTER,
        )
        if existing is not None:
            return Batch.from_document(existing), existing["_id"] == batch_id
        doc: BatchDocument = {
            "_id": batch_id,
            "release_id": release_id,
            "status": RELEASING,
            "requested_at_ms": requested_at_ms,
            "min_idle_seconds": min_idle_seconds,
            "partition_count": partition_count,
            "partitions": {},
            "request_ids": [request_id],
            "markers_sent_at_ms": now_ms(),
            "heal_count": 0,
        }
        try:
            self.batches.insert_one(doc)
        except DuplicateKeyError:  # created by this request before a restart
            again = self.batches.find_one_and_update(
                {"_id": batch_id},
                {"$addToSet": {"request_ids": request_id}},
                return_document=ReturnDocument.AFTER,
            )
            if again is None:
                raise
            return Batch.from_document(again), True
        return Batch.from_document(doc), True

    def record_partition(
        self, batch_id: ObjectId, partition: int, counts: PartCounts, offset: int
    ) -> Batch | None:
        """Record a partition's part (the first report wins) and return the batch."""
        part: PartDocument = {**counts, "offset": offset}
        self.batches.update_one(
            {"_id": batch_id, f"partitions.{partition}": {"$exists": False}},
            {"$set": {f"partitions.{partition}": part}},
        )
        return self.get(batch_id)

    def mark_released(self, batch: Batch, released_at_ms: int) -> Batch | None:
        """Complete the batch (the first call's time wins), with the digest of its parts
        if each has one, and return it."""
        batch_id, parts = ObjectId(batch.batch_id), batch.part_digests
        self.batches.update_one(
            {"_id": batch_id, "status": RELEASING},
            {
                "$set": {
                    "status": RELEASED,
                    "released_at_ms": released_at_ms,
                    "content_digest": batch_digest(parts) if parts else None,
                }
            },
        )
        return self.get(batch_id)

    def mark_empty(self, batch_id: ObjectId) -> None:
        """Nothing to release: free the release_id; the document expires soon after."""
        doc = self.batches.find_one({"_id": batch_id, "status": RELEASING})
        if doc is None:
            return
        self.batches.update_one(
            {"_id": batch_id, "status": RELEASING},
            {
                "$set": {
                    "status": EMPTY,
                    "empty_release_id": doc["release_id"],
                    "emptied_at": datetime.now(UTC),
                },
                "$unset": {"release_id": ""},
            },
        )

    def stalled_releases(self, sent_before_ms: int) -> list[Batch]:
        """Batches still releasing whose markers were last sent before ``sent_before_ms``."""
        cursor = self.batches.find(
            {
                "status": RELEASING,
                "markers_sent_at_ms": {"$lt": sent_before_ms},
            }
        )
        return [Batch.from_document(doc) for doc in cursor]

    def mark_markers_sent(self, batch_id: ObjectId, sent_at_ms: int) -> None:
        """Record that the batch's markers were sent again (to heal it)."""
        self.batches.update_one(
            {"_id": batch_id, "status": RELEASING},
            {"$set": {"markers_sent_at_ms": sent_at_ms}, "$inc": {"heal_count": 1}},
        )

    # -- partition owners ---------------------------------------------------------------

    def record_unreleasable(self, batch_id: ObjectId, partition: int, ids: list[str]) -> None:
        """Note on the batch the sessions of ``partition`` that could not be stored."""
        self.batches.update_one({"_id": batch_id}, {"$set": {f"unreleasable.{partition}": ids}})

    # -- readers ------------------------------------------------------------------------

    def get(self, batch_id: ObjectId) -> Batch | None:
        doc = self.batches.find_one({"_id": batch_id})
        return Batch.from_document(doc) if doc else None

    def find_by_release(self, release_id: str) -> Batch | None:
        doc = self.batches.find_one({"release_id": release_id})
        return Batch.from_document(doc) if doc else None

    def find_by_request(self, request_id: str) -> Batch | None:
        doc = self.batches.find_one({"request_ids": request_id})
        return Batch.from_document(doc) if doc else None

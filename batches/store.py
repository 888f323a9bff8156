"""MongoDB batches: what fine-tuning jobs read.

Two collections:

- ``batches``: one document per release; ``_id`` is the ``batch_id`` (an ObjectId), a unique
  index on ``release_id``; status, counts, timestamps and per-partition progress.
- ``batch_sessions``: one document per session of a batch, ``_id`` ``<batch_id>:<session_id>``
  (so a session is in a batch once), with a ``session_number`` unique within the batch for
  paging. Free-form objects are kept as JSON text: BSON cannot hold every JSON number.

Every write is idempotent (upserts on deterministic ids, first-write-wins updates), so
at-least-once processing upstream gives exactly-once contents here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, ReturnDocument
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from batches.exceptions import MissingMongoUriError
from batches.public import public_session
from clickstream.clock import now_ms

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pymongo.collection import Collection

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

RELEASING = "releasing"
RELEASED = "released"
EMPTY = "empty"
# An empty release leaves no batch: its document is kept this long for the waiting
# requests to read the outcome, without holding the release_id.
EMPTY_RELEASE_TTL_SECONDS = 3600
_WRITE_CHUNK = 1000


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
    partitions: dict[str, dict[str, int]]
    request_ids: tuple[str, ...] = ()
    markers_sent_at_ms: int = 0
    heal_count: int = 0

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Batch:
        return cls(
            batch_id=str(doc["_id"]),
            release_id=doc.get("release_id") or doc.get("empty_release_id", ""),
            status=doc["status"],
            requested_at_ms=doc["requested_at_ms"],
            released_at_ms=doc.get("released_at_ms"),
            min_idle_seconds=doc.get("min_idle_seconds", 0),
            partition_count=doc["partition_count"],
            partitions=doc.get("partitions", {}),
            request_ids=tuple(doc.get("request_ids", ())),
            markers_sent_at_ms=doc.get("markers_sent_at_ms", doc["requested_at_ms"]),
            heal_count=doc.get("heal_count", 0),
        )

    def total(self, name: str) -> int:
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

    def public(self) -> dict[str, Any]:
        """The answer of the release and batch endpoints."""
        released = self.status == RELEASED
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
        }


def parse_batch_id(batch_id: str) -> ObjectId | None:
    """The ObjectId of a batch id, or None if it is not 24 hex characters."""
    return ObjectId(batch_id) if ObjectId.is_valid(batch_id) and len(batch_id) == 24 else None


class BatchStore:
    """Reads and writes the batch collections.

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
        self.batches: Collection[dict[str, Any]] = db["batches"]
        self.sessions: Collection[dict[str, Any]] = db["batch_sessions"]

    @classmethod
    @classmethod
    def connect(
        cls, uri: str, database: str, *, server_selection_timeout_seconds: float = 10.0
    ) -> BatchStore:
        """A store on its own client. An operation fails once no usable server was found
        within the timeout."""
        client: MongoClient[dict[str, Any]] = MongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=int(server_selection_timeout_seconds * 1000),
        )
        return cls(client, database)

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchStore:
        """The store ``CLICKSTREAM_MONGODB_*`` name; :class:`MissingMongoUriError` (a
        ValueError) when no MongoDB is set."""
        if not settings.mongodb_url:
            raise MissingMongoUriError("no MongoDB: set CLICKSTREAM_MONGODB_URI")
        return cls.connect(
            settings.mongodb_url,
            settings.mongodb_database,
            server_selection_timeout_seconds=settings.mongodb_server_selection_timeout_seconds,
        )

    def close(self) -> None:
        self.client.close()

    def ensure_indexes(self) -> None:
        self.batches.create_index(
            "release_id",
            unique=True,
            partialFilterExpression={"release_id": {"$type": "string"}},
        )
        self.batches.create_index("request_ids")
        self.batches.create_index("status")
        self.batches.create_index("emptied_at", expireAfterSeconds=EMPTY_RELEASE_TTL_SECONDS)
        self.sessions.create_index(
            [("batch_id", ASCENDING), ("session_number", ASCENDING)], unique=True
        )
        # A retired session that gets events again is brought back from its latest copy.
        self.sessions.create_index([("session_id", ASCENDING), ("batch_id", DESCENDING)])

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
        doc = {
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
        self, batch_id: ObjectId, partition: int, counts: dict[str, int], offset: int
    ) -> Batch | None:
        """Record a partition's part (the first report wins) and return the batch."""
        self.batches.update_one(
            {"_id": batch_id, f"partitions.{partition}": {"$exists": False}},
            {"$set": {f"partitions.{partition}": {**counts, "offset": offset}}},
        )
        return self.get(batch_id)

    def mark_released(self, batch_id: ObjectId, released_at_ms: int) -> Batch | None:
        """Complete the batch (the first call's time wins) and return it."""
        self.batches.update_one(
            {"_id": batch_id, "status": RELEASING},
            {"$set": {"status": RELEASED, "released_at_ms": released_at_ms}},
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
                "$or": [
                    {"markers_sent_at_ms": {"$lt": sent_before_ms}},
                    # documents of an earlier version: their markers went with the request
                    {
                        "markers_sent_at_ms": {"$exists": False},
                        "requested_at_ms": {"$lt": sent_before_ms},
                    },
                ],
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

    def write_sessions(self, docs: Sequence[dict[str, Any]]) -> None:
        """Upsert batch sessions by their deterministic ids, in bulk."""
        for start in range(0, len(docs), _WRITE_CHUNK):
            chunk = docs[start : start + _WRITE_CHUNK]
            self.sessions.bulk_write(
                [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in chunk],
                ordered=False,
            )

    def part_sessions(self, batch_id: ObjectId, partition: int) -> list[dict[str, Any]]:
        """The session ids and event counts one partition wrote into a batch."""
        return list(
            self.sessions.find(
                {"batch_id": batch_id, "partition": partition},
                {"_id": 0, "session_id": 1, "event_count": 1},
            )
        )

    def latest_session(self, session_id: str) -> dict[str, Any] | None:
        """The session's copy in its latest batch (batch ids grow with time), with its
        events; None if it was never released."""
        return self.sessions.find_one({"session_id": session_id}, sort=[("batch_id", DESCENDING)])

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

    def sessions_page(
        self, batch_id: ObjectId, after_number: int, limit: int, events_limit: int
    ) -> list[dict[str, Any]]:
        """Sessions numbered above ``after_number``, in order, each with at most
        ``events_limit`` events."""
        cursor = (
            self.sessions.find(
                {"batch_id": batch_id, "session_number": {"$gt": after_number}},
                {"events": {"$slice": events_limit}},
            )
            .sort("session_number", ASCENDING)
            .limit(limit)
        )
        return [public_session(doc) for doc in cursor]

    def iter_sessions(self, batch_id: ObjectId, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """Every session of the batch with all its events, in ``session_number`` order.

        Reads page by page on the unique index, so memory stays bounded by ``page_size``
        sessions whatever the batch's size, and a lost cursor never skips or repeats.
        """
        after = 0
        while True:
            page = list(
                self.sessions.find({"batch_id": batch_id, "session_number": {"$gt": after}})
                .sort("session_number", ASCENDING)
                .limit(page_size)
            )
            if not page:
                return
            for doc in page:
                yield public_session(doc)
            after = page[-1]["session_number"]

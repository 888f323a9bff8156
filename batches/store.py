"""MongoDB batches: what fine-tuning jobs read.

Two collections:

- ``batches``: one document per release; ``_id`` is the ``batch_id`` (an ObjectId), a unique
  index on ``release_id``; status, counts, timestamps and per-partition progress.
- ``batch_sessions``: one document per session of a batch, ``_id`` ``<batch_id>:<session_id>``
  (so a session is in a batch once), with a ``session_number`` unique within the batch for
  paging, and its first events; ``batch_session_events``: the rest of a large session's
  events, in chunks (see ``documents``). Free-form objects are kept as JSON text: BSON
  cannot hold every JSON number.

Every write is idempotent (upserts on deterministic ids, first-write-wins updates), so
at-least-once processing upstream gives exactly-once contents here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import bson
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from batches.digest import BatchCheck, PartDigest, batch_digest
from batches.documents import session_documents
from batches.exceptions import (
    BatchContentMismatchError,
    BatchExpiredError,
    MissingMongoUriError,
)
from batches.public import public_session
from clickstream.clock import now_ms

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from pymongo.collection import Collection

    from batches.documents import SessionCopy
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

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
# A part is inserted in groups of about this many bytes (BSON): bounded memory, few calls.
_WRITE_GROUP_BYTES = 8 * 1024 * 1024
_DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class Refused:
    """A session MongoDB would not store, and why (its documents were removed)."""

    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class WrittenPart:
    """A partition's part as stored: the sessions MongoDB refused, and the part's digest."""

    refused: list[Refused]
    content_digest: str


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
    partitions: dict[str, dict[str, Any]]
    request_ids: tuple[str, ...] = ()
    markers_sent_at_ms: int = 0
    heal_count: int = 0
    # Per partition, the sessions MongoDB refused to store (not in the batch).
    unreleasable: dict[str, list[str]] | None = None
    # SHA-256 of the released content (``batches.digest``); None for a batch released
    # before digests were kept.
    content_digest: str | None = None
    # Sessions taken out since by erasures (``batches.erasures``): the counts are of the rest.
    erased_session_count: int = 0

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
        self.event_chunks: Collection[dict[str, Any]] = db["batch_session_events"]

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
        self.event_chunks.create_index(
            [("batch_id", ASCENDING), ("session_number", ASCENDING), ("chunk", ASCENDING)],
            unique=True,
        )

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
        self, batch_id: ObjectId, partition: int, counts: dict[str, Any], offset: int
    ) -> Batch | None:
        """Record a partition's part (the first report wins) and return the batch."""
        self.batches.update_one(
            {"_id": batch_id, f"partitions.{partition}": {"$exists": False}},
            {"$set": {f"partitions.{partition}": {**counts, "offset": offset}}},
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

    def write_part(
        self, batch_id: ObjectId, partition: int, copies: Iterable[SessionCopy]
    ) -> WrittenPart:
        """Insert the sessions of a partition's part of a batch, each encoded once, in
        groups of unordered inserts. Documents already there (a part written again after
        a crash) are left as they are: they are the same.

        Returns the sessions MongoDB refused (none, as long as every document stays below
        its limit, which ``documents`` sees to), with their documents removed: not in the
        batch at all rather than in part; and the part's digest (``batches.digest``), of
        the bytes inserted or, when some were refused or already there, of what MongoDB
        holds.
        """
        refused: dict[str, str] = {}
        existed = False
        digest = PartDigest()
        group: list[tuple[str, bool, RawBSONDocument]] = []
        size = 0
        for copy in copies:
            head, chunks = session_documents(copy)
            try:
                encoded = [bson.encode(doc) for doc in (head, *chunks)]
            except (BSONError, OverflowError, ValueError) as exc:
                refused[copy.session_id] = f"not storable as BSON: {exc}"
                continue
            digest.add(encoded)
            for position, raw in enumerate(encoded):
                group.append((copy.session_id, position > 0, RawBSONDocument(raw)))
                size += len(raw)
            if size >= _WRITE_GROUP_BYTES:
                existed |= self._insert(group, refused)
                group, size = [], 0
        if group:
            existed |= self._insert(group, refused)
        if refused:
            ids = list(refused)
            self.sessions.delete_many({"batch_id": batch_id, "session_id": {"$in": ids}})
            self.event_chunks.delete_many({"batch_id": batch_id, "session_id": {"$in": ids}})
        content_digest = (
            self.part_digest(batch_id, partition) if refused or existed else digest.hexdigest()
        )
        return WrittenPart(
            [Refused(session_id, reason) for session_id, reason in refused.items()],
            content_digest,
        )

    def _insert(
        self, group: list[tuple[str, bool, RawBSONDocument]], refused: dict[str, str]
    ) -> bool:
        """Insert ``group`` (session id, whether a chunk, document), noting in ``refused``
        the sessions refused, with why; whether some documents were there already."""
        existed = False
        for collection, is_chunk in ((self.sessions, False), (self.event_chunks, True)):
            docs = [(session_id, raw) for session_id, chunk, raw in group if chunk is is_chunk]
            if not docs:
                continue
            try:
                collection.insert_many([raw for _, raw in docs], ordered=False)
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise  # the server's trouble, not the documents': retried upstream
                for error in exc.details.get("writeErrors", ()):
                    if error["code"] == _DUPLICATE_KEY:
                        existed = True
                        continue
                    session_id = docs[error["index"]][0]
                    refused[session_id] = (
                        f"MongoDB refused it (code {error['code']}): {error.get('errmsg', '')}"
                    )
        return existed

    def part_digest(self, batch_id: ObjectId, partition: int) -> str:
        """The digest of the part MongoDB holds for ``partition`` of the batch."""
        digest = PartDigest()
        for _, documents in self._stored_sessions(batch_id, {"partition": partition}):
            digest.add(documents)
        return digest.hexdigest()

    def record_unreleasable(self, batch_id: ObjectId, partition: int, ids: list[str]) -> None:
        """Note on the batch the sessions of ``partition`` that could not be stored."""
        self.batches.update_one({"_id": batch_id}, {"$set": {f"unreleasable.{partition}": ids}})

    def part_sessions(self, batch_id: ObjectId, partition: int) -> list[dict[str, Any]]:
        """The session ids and event counts one partition wrote into a batch."""
        return list(
            self.sessions.find(
                {"batch_id": batch_id, "partition": partition},
                {"_id": 0, "session_id": 1, "event_count": 1},
            )
        )

    def latest_session(self, session_id: str) -> dict[str, Any] | None:
        """The session's copy in its latest batch (batch ids grow with time), with all its
        events; None if it was never released."""
        head = self.sessions.find_one({"session_id": session_id}, sort=[("batch_id", DESCENDING)])
        if head is None:
            return None
        batch = self.batches.find_one({"_id": head["batch_id"]}, {"status": 1})
        if batch is not None and batch["status"] in GONE:
            return None  # being deleted: what is left of it is not the session
        return self._with_chunks(head)

    def _with_chunks(self, head: dict[str, Any], events_limit: int | None = None) -> dict[str, Any]:
        """A session's document with the events of its chunks appended (up to
        ``events_limit`` events in all, if given)."""
        if not head.get("event_chunks") or (
            events_limit is not None and len(head["events"]) >= events_limit
        ):
            return head
        events = head["events"]
        cursor = self.event_chunks.find(
            {"batch_id": head["batch_id"], "session_number": head["session_number"]},
            {"events": 1},
        ).sort("chunk", ASCENDING)
        for chunk in cursor:
            events.extend(chunk["events"])
            if events_limit is not None and len(events) >= events_limit:
                del events[events_limit:]
                break
        return head

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
        return [public_session(self._with_chunks(doc, events_limit)) for doc in cursor]

    def iter_sessions(
        self, batch_id: ObjectId, page_size: int = 500, *, verify: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Every session of the batch with all its events, in ``session_number`` order.

        Reads page by page on the unique index, one session's events at a time, so memory
        stays bounded by the driver's batch and one session whatever the batch's size, and
        a lost cursor never skips or repeats.

        With ``verify`` (and a batch that has a digest), the bytes read are checked against
        the digest recorded when the batch was written: after the last session,
        :class:`BatchContentMismatchError` names the partitions whose sessions changed.
        :class:`BatchExpiredError` for a batch that expired (or did while it was read).
        """
        batch = self.get(batch_id)
        if batch is not None and batch.expired:
            raise BatchExpiredError(f"batch {batch_id} is {batch.status}: its sessions are gone")
        check = (
            BatchCheck(batch.part_digests) if verify and batch and batch.content_digest else None
        )
        for doc, documents in self._stored_sessions(batch_id, {}, page_size):
            if check is not None:
                check.add(doc["partition"], documents)
            yield public_session(doc)
        if check is None or not (differing := check.differing_parts()):
            return
        now = self.get(batch_id)
        if now is not None and now.expired:
            raise BatchExpiredError(f"batch {batch_id} expired while it was read")
        raise BatchContentMismatchError(
            f"batch {batch_id} is not as it was written: the sessions of partition(s) "
            f"{', '.join(map(str, differing))} differ from its content digest"
        )

    def _stored_sessions(
        self, batch_id: ObjectId, where: dict[str, Any], page_size: int = 500
    ) -> Iterator[tuple[dict[str, Any], list[bytes | memoryview]]]:
        """The batch's sessions matching ``where``, in ``session_number`` order, each with
        all its events and the BSON of its documents (head, then chunks) as stored."""
        raw_options = CodecOptions(document_class=RawBSONDocument)
        sessions = self.sessions.with_options(codec_options=raw_options)
        chunks = self.event_chunks.with_options(codec_options=raw_options)
        decode_options = self.sessions.codec_options
        after = 0
        while True:
            cursor = (
                sessions.find({**where, "batch_id": batch_id, "session_number": {"$gt": after}})
                .sort("session_number", ASCENDING)
                .limit(page_size)
            )
            read = 0
            for raw in cursor:
                read += 1
                documents: list[bytes | memoryview] = [raw.raw]
                doc = bson.decode(raw.raw, decode_options)
                after = doc["session_number"]
                if doc.get("event_chunks"):
                    for chunk in chunks.find({"batch_id": batch_id, "session_number": after}).sort(
                        "chunk", ASCENDING
                    ):
                        documents.append(chunk.raw)
                        doc["events"].extend(bson.decode(chunk.raw, decode_options)["events"])
                yield doc, documents
            if read < page_size:
                return

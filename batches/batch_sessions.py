"""The sessions of batches: ``batch_sessions``, one document per session of a batch, and
``batch_session_events``, the rest of a large session's events in chunks (see ``store``
and ``documents``); a partition's part written, sessions read back and checked against
the batch's digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, cast

import bson
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError

from batches.batch import GONE
from batches.batch_documents import BatchDocuments
from batches.digest import BatchCheck, PartDigest
from batches.documents import session_documents
from batches.exceptions import BatchContentMismatchError, BatchExpiredError
from batches.public import public_session

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from bson import ObjectId
    from pymongo.cursor import Cursor

    from batches.documents import BatchSessionDocument, SessionCopy
    from batches.public import PublicBatchSession

# A part is inserted in groups of about this many bytes (BSON): bounded memory, few calls.
_WRITE_GROUP_BYTES = 8 * 1024 * 1024
_DUPLICATE_KEY = 11000


class PartSession(TypedDict):
    """A session a partition wrote into a batch, as :meth:`BatchSessions.part_sessions`
    reads it."""

    session_id: str
    event_count: int


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


class BatchSessions(BatchDocuments):
    """Writes and reads the sessions of batches; what a batch document says (its status,
    its digest) decides whether and how they are read.

    Args:
        client: a pymongo client (thread-safe; share one per process).
        database: ``CLICKSTREAM_MONGODB_DATABASE``.
    """

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

    def part_sessions(self, batch_id: ObjectId, partition: int) -> list[PartSession]:
        """The session ids and event counts one partition wrote into a batch."""
        projected = self.sessions.find(
            {"batch_id": batch_id, "partition": partition},
            {"_id": 0, "session_id": 1, "event_count": 1},
        )
        return list(cast("Cursor[PartSession]", projected))

    def latest_session(self, session_id: str) -> BatchSessionDocument | None:
        """The session's copy in its latest batch (batch ids grow with time), with all its
        events; None if it was never released."""
        head = self.sessions.find_one({"session_id": session_id}, sort=[("batch_id", DESCENDING)])
        if head is None:
            return None
        batch = self.batches.find_one({"_id": head["batch_id"]}, {"status": 1})
        if batch is not None and batch["status"] in GONE:
            return None  # being deleted: what is left of it is not the session
        return self._with_chunks(head)

    def _with_chunks(
        self, head: BatchSessionDocument, events_limit: int | None = None
    ) -> BatchSessionDocument:
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

    def sessions_page(
        self, batch_id: ObjectId, after_number: int, limit: int, events_limit: int
    ) -> list[PublicBatchSession]:
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
    ) -> Iterator[PublicBatchSession]:
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
        self, batch_id: ObjectId, where: dict[str, object], page_size: int = 500
    ) -> Iterator[tuple[BatchSessionDocument, list[bytes | memoryview]]]:
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

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

``BatchStore`` is built in layers, each a module: ``batch_documents`` (the ``batches``
collection: releases opened, parts recorded, batches completed and looked up),
``batch_sessions`` (a partition's part written, sessions read back, paged and checked
against the digest), and here connecting and the indexes; ``batch`` is a batch document
as the API shows it. Every name of the store is still imported from here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, MongoClient

from batches.batch import (
    EMPTY,
    EMPTY_RELEASE_TTL_SECONDS,
    EXPIRED,
    EXPIRING,
    GONE,
    RELEASED,
    RELEASING,
    Batch,
    parse_batch_id,
)
from batches.batch_sessions import BatchSessions, Refused, WrittenPart
from batches.exceptions import MissingMongoUriError

if TYPE_CHECKING:
    from clickstream.settings import Settings

__all__ = [
    "EMPTY",
    "EMPTY_RELEASE_TTL_SECONDS",
    "EXPIRED",
    "EXPIRING",
    "GONE",
    "RELEASED",
    "RELEASING",
    "Batch",
    "BatchStore",
    "Refused",
    "WrittenPart",
    "parse_batch_id",
]

logger = logging.getLogger(__name__)


class BatchStore(BatchSessions):
    """Reads and writes the batch collections: the batch documents (``batch_documents``),
    the sessions of batches (``batch_sessions``); connecting and the indexes here.

    Args:
        client: a pymongo client (thread-safe; share one per process).
        database: ``CLICKSTREAM_MONGODB_DATABASE``.
    """

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

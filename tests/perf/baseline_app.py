"""The design this pipeline replaces, for the benchmark to measure against: EmbeddingStudio
v1.0.0's clickstream API (see ``shared/reference/upstream-clickstream.md``), minimal and
faithful. Synchronous FastAPI handlers write each request straight into MongoDB with
pymongo: ``sessions`` (unique session_id), ``session_events`` (unique session_id and
event_id) and ``session_batches`` (one batch "collecting", stamped on each new session).

Run with ``uvicorn tests.perf.baseline_app:app``; MongoDB from ``BASELINE_MONGODB_URI``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

_client: MongoClient[dict[str, Any]] = MongoClient(os.environ["BASELINE_MONGODB_URI"])
_db = _client[os.environ.get("BASELINE_MONGODB_DATABASE", "baseline")]
sessions = _db["sessions"]
events = _db["session_events"]
batches = _db["session_batches"]
sessions.create_index([("session_id", ASCENDING)], unique=True)
events.create_index([("session_id", ASCENDING), ("event_id", ASCENDING)], unique=True)
batches.create_index([("status", ASCENDING)])

_MAX_AGE, _MAX_AHEAD = 12 * 3600, 5 * 60


def _check_time(created_at: int | None) -> int:
    now = int(time.time())
    if created_at is None:
        return now
    if not now - _MAX_AGE <= created_at <= now + _MAX_AHEAD:
        raise HTTPException(status_code=400, detail="created_at is out of range")
    return created_at


class SearchResult(BaseModel):
    object_id: str
    rank: float | None = None
    meta: dict[str, Any] | None = None


class Session(BaseModel):
    session_id: str
    search_query: str
    search_results: list[SearchResult]
    search_meta: dict[str, Any] | None = None
    user_id: str | None = None
    created_at: int | None = None


class Event(BaseModel):
    event_id: str
    object_id: str
    event_type: str = "click"
    created_at: int | None = None
    meta: dict[str, Any] | None = None


class NewEvents(BaseModel):
    session_id: str
    events: list[Event] = Field(default_factory=list)


app = FastAPI()


def _collecting_batch_id() -> Any:
    batch = batches.find_one_and_update(
        {"status": "collecting"},
        {"$setOnInsert": {"status": "collecting", "created_at": int(time.time())}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return batch["_id"]


@app.post("/api/v1/clickstream/session")
def register_session(body: Session) -> None:
    document = body.model_dump()
    document["created_at"] = _check_time(body.created_at)
    document["batch_id"] = _collecting_batch_id()
    document["is_irrelevant"] = False
    try:
        sessions.insert_one(document)
    except DuplicateKeyError:
        pass  # first write wins


@app.post("/api/v1/clickstream/session/events")
def push_events(body: NewEvents) -> None:
    documents = []
    for event in body.events:
        document = event.model_dump()
        document["created_at"] = _check_time(event.created_at)
        document["session_id"] = body.session_id
        documents.append(document)
    if not documents:
        return
    try:
        events.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        if any(e["code"] != 11000 for e in exc.details["writeErrors"]):
            raise  # duplicates are dropped silently, anything else is not

"""What a request publishes: one place that turns validated input into Avro messages,
used by the HTTP gateway and the producer library alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clickstream.pseudonyms import pseudonym
from producers.publisher import OutgoingMessage
from schemas import SchemaName, Topics, to_json_text
from schemas.records import SessionEvents

if TYPE_CHECKING:
    from clickstream.settings import Settings
    from producers.models import EventsIn, SearchResultIn, SessionIn, SortByIn
    from schemas import AvroCodec, JsonObject
    from schemas.records import (
        EventItem,
        ForgetRequested,
        ReleaseRequested,
        SearchResult,
        SessionMarkedIrrelevant,
        SessionRegistered,
        SortBy,
    )

# A request's events go in one message up to about this many bytes, then in more: one
# message per request is what makes the gateway and the worker fast, and the cap keeps
# every message far below Kafka's default limit of 1 MB whatever the events carry.
MAX_EVENTS_MESSAGE_BYTES = 256 * 1024
_EVENT_OVERHEAD_BYTES = 32


def _json_or_none(value: JsonObject | None) -> str | None:
    return None if value is None else to_json_text(value)


def _result_record(result: SearchResultIn) -> SearchResult:
    return {"object_id": result.object_id, "rank": result.rank, "meta": _json_or_none(result.meta)}


def _sort_by(sort_by: SortByIn) -> SortBy:
    return {
        "field": sort_by.field,
        "order": sort_by.order,
        "force_not_payload": sort_by.force_not_payload,
    }


@dataclass(frozen=True, slots=True)
class PreparedSession:
    """The message registering a session, and the ``created_at`` it carries."""

    message: OutgoingMessage
    created_at: int


class IngestMessages:
    """Builds the messages of the two ingest requests, applying the contract's defaults.

    Args:
        codec: the shared Avro codec.
        topics: the deployment's topic names.
        user_id_key: ``CLICKSTREAM_USER_ID_KEY``: user ids are published as their pseudonym.
    """

    def __init__(self, codec: AvroCodec, topics: Topics, user_id_key: bytes | None = None) -> None:
        self._codec = codec
        self._topics = topics
        self._user_id_key = user_id_key

    @classmethod
    def from_settings(cls, codec: AvroCodec, settings: Settings) -> IngestMessages:
        key = settings.user_id_key
        return cls(
            codec,
            Topics(settings.topic_prefix),
            key.get_secret_value().encode() if key is not None else None,
        )

    def session(self, session: SessionIn, now: float | None = None) -> PreparedSession:
        """The SessionRegistered message; ``created_at`` defaults to ``now`` (UTC seconds)."""
        record = self.session_record(session, now)
        message = OutgoingMessage(
            self._topics.sessions,
            session.session_id.encode(),
            self._codec.encode(SchemaName.SESSION_REGISTERED, record),
        )
        return PreparedSession(message, record["created_at"])

    def _user_id(self, user_id: str) -> str:
        """The user id as published: its pseudonym with ``CLICKSTREAM_USER_ID_KEY``."""
        return user_id if self._user_id_key is None else pseudonym(self._user_id_key, user_id)

    def session_record(self, session: SessionIn, now: float | None = None) -> SessionRegistered:
        """The SessionRegistered record of a request, its defaults applied."""
        now = time.time() if now is None else now
        created_at = int(now) if session.created_at is None else session.created_at
        return {
            "session_id": session.session_id,
            "search_query": session.search_query,
            "search_results": [_result_record(result) for result in session.search_results],
            "search_meta": _json_or_none(session.search_meta),
            "user_id": None if session.user_id is None else self._user_id(session.user_id),
            "created_at": created_at,
            "received_at_ms": int(now * 1000),
            "payload_filter": _json_or_none(session.payload_filter),
            "sort_by": None if session.sort_by is None else _sort_by(session.sort_by),
        }

    def events(self, batch: EventsIn, now: float | None = None) -> list[OutgoingMessage]:
        """The request's events in SessionEvents messages keyed by the session, in order:
        one message, or more if they exceed ``MAX_EVENTS_MESSAGE_BYTES``."""
        key = batch.session_id.encode()
        return [
            OutgoingMessage(
                self._topics.events, key, self._codec.encode(SchemaName.SESSION_EVENTS, record)
            )
            for record, _ in self.events_records(batch, now)
        ]

    def events_records(
        self, batch: EventsIn, now: float | None = None
    ) -> list[tuple[SessionEvents, int]]:
        """The request's events as SessionEvents records of at most about
        ``MAX_EVENTS_MESSAGE_BYTES`` each, in order, with the size of each."""
        now = time.time() if now is None else now
        now_seconds = int(now)
        chunks: list[list[EventItem]] = [[]]
        sizes = [0]
        size = 0
        for event in batch.events:
            meta = _json_or_none(event.meta)
            item: EventItem = {
                "event_id": event.event_id,
                "object_id": event.object_id,
                "event_type": event.event_type,
                "created_at": now_seconds if event.created_at is None else event.created_at,
                "meta": meta,
            }
            # Characters, not bytes: close enough for a cap that sits far below the limit.
            item_size = (
                _EVENT_OVERHEAD_BYTES
                + len(event.event_id)
                + len(event.object_id)
                + len(event.event_type)
                + (len(meta) if meta else 0)
            )
            if chunks[-1] and size + item_size > MAX_EVENTS_MESSAGE_BYTES:
                chunks.append([])
                sizes.append(0)
                size = 0
            chunks[-1].append(item)
            size += item_size
            sizes[-1] = size
        received_at_ms = int(now * 1000)
        return [
            (
                SessionEvents(
                    session_id=batch.session_id, events=chunk, received_at_ms=received_at_ms
                ),
                chunk_size,
            )
            for chunk, chunk_size in zip(chunks, sizes, strict=True)
            if chunk
        ]

    def irrelevant(self, session_id: str, now: float | None = None) -> OutgoingMessage:
        """The SessionMarkedIrrelevant message: a change that goes through the stream."""
        now = time.time() if now is None else now
        record: SessionMarkedIrrelevant = {
            "session_id": session_id,
            "received_at_ms": int(now * 1000),
        }
        return OutgoingMessage(
            self._topics.sessions,
            session_id.encode(),
            self._codec.encode(SchemaName.SESSION_MARKED_IRRELEVANT, record),
        )

    def forget_request(
        self, user_id: str, request_id: str, now: float | None = None
    ) -> OutgoingMessage:
        """The ForgetRequested message, for the release coordinator: the user id as the
        sessions were published (its pseudonym when they are)."""
        now = time.time() if now is None else now
        record: ForgetRequested = {
            "request_id": request_id,
            "user_id": self._user_id(user_id),
            "requested_at_ms": int(now * 1000),
        }
        return OutgoingMessage(
            self._topics.releases,
            request_id.encode(),
            self._codec.encode(SchemaName.FORGET_REQUESTED, record),
        )

    def release_request(
        self, release_id: str, min_idle_seconds: int, request_id: str, now: float | None = None
    ) -> OutgoingMessage:
        """The ReleaseRequested message, for the release coordinator."""
        now = time.time() if now is None else now
        record: ReleaseRequested = {
            "request_id": request_id,
            "release_id": release_id,
            "min_idle_seconds": min_idle_seconds,
            "requested_at_ms": int(now * 1000),
        }
        return OutgoingMessage(
            self._topics.releases,
            release_id.encode(),
            self._codec.encode(SchemaName.RELEASE_REQUESTED, record),
        )

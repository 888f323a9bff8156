"""What a request publishes: one place that turns validated input into Avro messages,
used by the HTTP gateway and the producer library alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from producers.publisher import OutgoingMessage
from schemas import to_json_text

if TYPE_CHECKING:
    from producers.models import EventsIn, SearchResultIn, SessionIn
    from schemas import AvroCodec, Topics

SESSION_REGISTERED = "clickstream.SessionRegistered"
SESSION_EVENT = "clickstream.SessionEvent"
SESSION_MARKED_IRRELEVANT = "clickstream.SessionMarkedIrrelevant"
RELEASE_REQUESTED = "clickstream.ReleaseRequested"


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else to_json_text(value)


def _result_record(result: SearchResultIn) -> dict[str, Any]:
    return {"object_id": result.object_id, "rank": result.rank, "meta": _json_or_none(result.meta)}


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
    """

    def __init__(self, codec: AvroCodec, topics: Topics) -> None:
        self._codec = codec
        self._topics = topics

    def session(self, session: SessionIn, now: float | None = None) -> PreparedSession:
        """The SessionRegistered message; ``created_at`` defaults to ``now`` (UTC seconds)."""
        now = time.time() if now is None else now
        created_at = int(now) if session.created_at is None else session.created_at
        record = {
            "session_id": session.session_id,
            "search_query": session.search_query,
            "search_results": [_result_record(result) for result in session.search_results],
            "search_meta": _json_or_none(session.search_meta),
            "user_id": session.user_id,
            "created_at": created_at,
            "received_at_ms": int(now * 1000),
        }
        message = OutgoingMessage(
            self._topics.sessions,
            session.session_id.encode(),
            self._codec.encode(SESSION_REGISTERED, record),
        )
        return PreparedSession(message, created_at)

    def events(self, batch: EventsIn, now: float | None = None) -> list[OutgoingMessage]:
        """One SessionEvent message per event, all keyed by the session."""
        now = time.time() if now is None else now
        now_seconds, now_ms = int(now), int(now * 1000)
        topic, key, encode = self._topics.events, batch.session_id.encode(), self._codec.encode
        return [
            OutgoingMessage(
                topic,
                key,
                encode(
                    SESSION_EVENT,
                    {
                        "session_id": batch.session_id,
                        "event_id": event.event_id,
                        "object_id": event.object_id,
                        "event_type": event.event_type,
                        "created_at": now_seconds if event.created_at is None else event.created_at,
                        "meta": _json_or_none(event.meta),
                        "received_at_ms": now_ms,
                    },
                ),
            )
            for event in batch.events
        ]

    def irrelevant(self, session_id: str, now: float | None = None) -> OutgoingMessage:
        """The SessionMarkedIrrelevant message: a change that goes through the stream."""
        now = time.time() if now is None else now
        record = {"session_id": session_id, "received_at_ms": int(now * 1000)}
        return OutgoingMessage(
            self._topics.sessions,
            session_id.encode(),
            self._codec.encode(SESSION_MARKED_IRRELEVANT, record),
        )

    def release_request(
        self, release_id: str, min_idle_seconds: int, request_id: str, now: float | None = None
    ) -> OutgoingMessage:
        """The ReleaseRequested message, for the release coordinator."""
        now = time.time() if now is None else now
        record = {
            "request_id": request_id,
            "release_id": release_id,
            "min_idle_seconds": min_idle_seconds,
            "requested_at_ms": int(now * 1000),
        }
        return OutgoingMessage(
            self._topics.releases,
            release_id.encode(),
            self._codec.encode(RELEASE_REQUESTED, record),
        )

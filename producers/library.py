"""A producer for services that write to Kafka directly instead of calling the gateway.

It validates with the gateway's models, applies the same defaults and publishes the same
Avro messages through the same code, so the stream cannot tell the two apart.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Self, TypeVar

from pydantic import ValidationError

from clickstream.settings import Settings, get_settings
from producers.exceptions import InvalidInputError
from producers.ingest import IngestMessages
from producers.models import (
    EventIn,
    EventsAccepted,
    EventsIn,
    Limits,
    ReleaseIn,
    RequestModel,
    SessionAccepted,
    SessionIn,
    request_models,
)
from producers.publisher import KafkaPublisher, OutgoingMessage
from schemas import AvroCodec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType


class ClickstreamProducer:
    """Registers sessions, adds events and requests releases, straight to Kafka.

    Every method returns once Kafka acknowledged all its messages (acks=all), and raises
    :class:`~producers.exceptions.PublishUnavailableError` when it did not in time:
    retrying is always safe. Input the contract refuses raises
    :class:`~producers.exceptions.InvalidInputError` and publishes nothing.

    Args:
        settings: default ``get_settings()``; Kafka is ``CLICKSTREAM_KAFKA_BOOTSTRAP``,
            topics are named with ``CLICKSTREAM_TOPIC_PREFIX``.

    Example::

        with ClickstreamProducer() as producer:
            producer.register_session({"session_id": "s1", "search_query": "shoes",
                                       "search_results": [{"object_id": "o1"}]})
            producer.add_events("s1", [{"event_id": "e1", "object_id": "o1"}])
    """

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        # The limits of these settings, not of the environment at import.
        self._models = request_models(Limits.from_settings(settings))
        self._messages = IngestMessages.from_settings(AvroCodec(), settings)
        self._publisher = KafkaPublisher(
            settings.kafka_producer_config(), settings.publish_timeout_seconds
        )

    def _prepare_session(
        self, session: SessionIn | Mapping[str, Any]
    ) -> tuple[SessionIn, int, OutgoingMessage]:
        valid = _validate(self._models.SessionIn, session)
        prepared = self._messages.session(valid, time.time())
        return valid, prepared.created_at, prepared.message

    def _prepare_events(
        self, session_id: str, events: Sequence[EventIn | Mapping[str, Any]]
    ) -> tuple[EventsIn, list[OutgoingMessage]]:
        raw_events = [e.model_dump() if isinstance(e, EventIn) else e for e in events]
        batch = _validate(self._models.EventsIn, {"session_id": session_id, "events": raw_events})
        return batch, self._messages.events(batch, time.time())

    def register_session(self, session: SessionIn | Mapping[str, Any]) -> SessionAccepted:
        """Register a search session (the fields of ``POST /api/v1/clickstream/session``)."""
        valid, created_at, message = self._prepare_session(session)
        self._publisher.publish_sync([message])
        return SessionAccepted(session_id=valid.session_id, created_at=created_at)

    def add_events(
        self, session_id: str, events: Sequence[EventIn | Mapping[str, Any]]
    ) -> EventsAccepted:
        """Add events to a session; all or nothing, like ``POST .../session/events``."""
        batch, messages = self._prepare_events(session_id, events)
        self._publisher.publish_sync(messages)
        return EventsAccepted(session_id=batch.session_id, accepted=len(batch.events))

    async def register_session_async(
        self, session: SessionIn | Mapping[str, Any]
    ) -> SessionAccepted:
        """:meth:`register_session` for asyncio code: waits without blocking the loop."""
        valid, created_at, message = self._prepare_session(session)
        await self._publisher.publish([message])
        return SessionAccepted(session_id=valid.session_id, created_at=created_at)

    async def add_events_async(
        self, session_id: str, events: Sequence[EventIn | Mapping[str, Any]]
    ) -> EventsAccepted:
        """:meth:`add_events` for asyncio code: waits without blocking the loop."""
        batch, messages = self._prepare_events(session_id, events)
        await self._publisher.publish(messages)
        return EventsAccepted(session_id=batch.session_id, accepted=len(batch.events))

    def _prepare_release(
        self, release_id: str, min_idle_seconds: int
    ) -> tuple[str, OutgoingMessage]:
        valid = _validate(
            self._models.ReleaseIn, {"release_id": release_id, "min_idle_seconds": min_idle_seconds}
        )
        request_id = uuid.uuid4().hex
        message = self._messages.release_request(
            valid.release_id, valid.min_idle_seconds, request_id, time.time()
        )
        return request_id, message

    def request_release(self, release_id: str, min_idle_seconds: int = 0) -> str:
        """Ask for a release by message on the releases topic, as an operator; return the
        request's id once Kafka acknowledged it.

        The same ``release_id`` always gives the same batch, whether asked by message, by
        HTTP or both. The answer comes on the batch topic, a ``ReleaseOutcome`` carrying
        this request id: wait for it with
        :meth:`consumers.batch_reader.BatchReader.wait_for_release`.
        """
        request_id, message = self._prepare_release(release_id, min_idle_seconds)
        self._publisher.publish_sync([message])
        return request_id

    async def request_release_async(self, release_id: str, min_idle_seconds: int = 0) -> str:
        """:meth:`request_release` for asyncio code: waits without blocking the loop."""
        request_id, message = self._prepare_release(release_id, min_idle_seconds)
        await self._publisher.publish([message])
        return request_id

    def close(self) -> None:
        """Deliver anything still queued and release the connection."""
        self._publisher.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_M = TypeVar("_M", SessionIn, EventsIn, ReleaseIn)


def _validate(model: type[_M], value: _M | Mapping[str, Any]) -> _M:
    if isinstance(value, model):
        return value
    if isinstance(value, RequestModel):
        # Built with other limits (e.g. the default classes): check it against these.
        value = value.model_dump()
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidInputError(
            [dict(error) for error in exc.errors(include_url=False, include_context=False)]
        ) from exc

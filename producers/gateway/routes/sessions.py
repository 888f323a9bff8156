"""Registering sessions and adding their events: the two ingest endpoints."""

import time

from fastapi import APIRouter, Request

from producers.gateway.deps import GatewayDep
from producers.gateway.request_body import body_schema, parse_body
from producers.models import EventsAccepted, EventsIn, SessionAccepted, SessionIn

router = APIRouter(prefix="/api/v1/clickstream", tags=["sessions"])

REFUSALS: dict[int | str, dict[str, str]] = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body over the size limit"},
    422: {"description": "A field is missing, of the wrong type or out of bounds"},
    503: {"description": "Kafka did not acknowledge in time; retry after Retry-After seconds"},
}


@router.post("/session", responses=REFUSALS, openapi_extra=body_schema(SessionIn))
async def register_session(request: Request, gateway: GatewayDep) -> SessionAccepted:
    """Register a search session. Answers once Kafka has acknowledged it.

    Registering a session id again keeps the first registration.
    """
    session = await parse_body(request, SessionIn)
    prepared = gateway.messages.session(session, time.time())
    await gateway.publisher.publish([prepared.message])
    return SessionAccepted(session_id=session.session_id, created_at=prepared.created_at)


@router.post("/session/events", responses=REFUSALS, openapi_extra=body_schema(EventsIn))
async def add_events(request: Request, gateway: GatewayDep) -> EventsAccepted:
    """Add events (clicks by default) to a session. All or nothing; answers once Kafka has
    acknowledged every event. A retried request is safe: events are de-duplicated by id.
    """
    batch = await parse_body(request, EventsIn)
    await gateway.publisher.publish(gateway.messages.events(batch, time.time()))
    return EventsAccepted(session_id=batch.session_id, accepted=len(batch.events))

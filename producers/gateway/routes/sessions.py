"""Registering sessions and adding their events: the two ingest endpoints."""

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError

from producers.gateway.deps import GatewayDep
from producers.gateway.refusals import REFUSALS
from producers.gateway.request_body import body_schema, parse_body, parse_json
from producers.models import (
    EventsAccepted,
    EventsIn,
    IrrelevantAccepted,
    SessionAccepted,
    SessionIn,
    SessionOut,
    SessionRef,
)

# The body schemas are named by class: the gateway's own classes (its limits) keep these names.

router = APIRouter(prefix="/api/v1/clickstream", tags=["sessions"])
# The writes: behind the ingest keys when CLICKSTREAM_INGEST_KEYS is set.
ingest_router = APIRouter(prefix="/api/v1/clickstream", tags=["sessions"])


@ingest_router.post("/session", responses=REFUSALS, openapi_extra=body_schema(SessionIn))
async def register_session(request: Request, gateway: GatewayDep) -> SessionAccepted:
    """Register a search session. Answers once Kafka has acknowledged it.

    Registering a session id again keeps the first registration.
    """
    body = await request.body()
    session = parse_json(body, gateway.models.SessionIn)
    record = gateway.messages.session_record(session, time.time())
    await gateway.grouping.session(record, len(body))
    return SessionAccepted(session_id=session.session_id, created_at=record["created_at"])


@ingest_router.post("/session/events", responses=REFUSALS, openapi_extra=body_schema(EventsIn))
async def add_events(request: Request, gateway: GatewayDep) -> EventsAccepted:
    """Add events (clicks by default) to a session. All or nothing; answers once Kafka has
    acknowledged every event. A retried request is safe: events are de-duplicated by id.
    """
    batch = await parse_body(request, gateway.models.EventsIn)
    await gateway.grouping.events(gateway.messages.events_records(batch, time.time()))
    return EventsAccepted(session_id=batch.session_id, accepted=len(batch.events))


SessionIdQuery = Annotated[
    str,
    # Its upper bound is CLICKSTREAM_MAX_ID_LENGTH of the gateway's settings, checked below.
    Query(min_length=1, description="The session"),
]


@router.get(
    "/session",
    responses={
        404: {"description": "No such session"},
        503: {"description": "No stream worker answered"},
    },
)
async def get_session(
    session_id: SessionIdQuery,
    gateway: GatewayDep,
    events_limit: Annotated[int, Query(ge=0, le=10000)] = 100,
) -> SessionOut:
    """A session with ``is_irrelevant`` and its first ``events_limit`` events, as the stream's
    tables hold it (a session appears once its registration has been processed)."""
    max_length = gateway.settings.max_id_length
    if len(session_id) > max_length:
        # The answer FastAPI gives for a Query(max_length=...), with this gateway's limit.
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("query", "session_id"),
                    "msg": f"String should have at most {max_length} characters",
                    "input": session_id,
                    "ctx": {"max_length": max_length},
                }
            ]
        )
    session = await gateway.workers.session(session_id, events_limit)
    if session is None:
        raise HTTPException(status_code=404, detail=f"session {session_id!r} is not registered")
    return SessionOut.model_validate(session)


@ingest_router.post(
    "/session/irrelevant", responses=REFUSALS, openapi_extra=body_schema(SessionRef)
)
async def mark_irrelevant(request: Request, gateway: GatewayDep) -> IrrelevantAccepted:
    """Mark a session irrelevant. The change goes through the stream like the registration
    did, after it on the same partition: a session whose registration was acknowledged can
    be marked at once. A mark for a session never registered goes to the dead-letter topic.
    """
    ref = await parse_body(request, gateway.models.SessionRef)
    await gateway.publisher.publish([gateway.messages.irrelevant(ref.session_id, time.time())])
    return IrrelevantAccepted(session_id=ref.session_id, is_irrelevant=True)

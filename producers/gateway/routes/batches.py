"""Releasing batches and reading them: the internal endpoints of operators and
fine-tuning jobs."""

import asyncio
import time
import uuid
from typing import Annotated

from bson import ObjectId
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from batches.store import EMPTY, RELEASING, Batch, BatchStore
from producers.gateway.deps import GatewayDep, StoreDep
from producers.gateway.polling import poll
from producers.gateway.refusals import REFUSALS
from producers.gateway.request_body import body_schema, parse_body
from producers.models import BatchOut, BatchSessionsPage, ReleaseIn

router = APIRouter(prefix="/api/v1/clickstream/internal", tags=["batches"])

_POLL_SECONDS = 0.05
BatchId = Annotated[
    str, Query(pattern="^[0-9a-fA-F]{24}$", description="24 hex characters: an ObjectId")
]
NOTHING_TO_RELEASE = (
    "nothing to release: no session was registered, or got new events, since the last "
    "release; no batch was created and the release_id is still free"
)


@router.post(
    "/batch/release",
    response_model=BatchOut,
    responses={
        **REFUSALS,
        202: {"model": BatchOut, "description": "Still releasing; it completes on its own"},
        404: {"description": "Nothing to release"},
        503: {"description": "Kafka or the release coordinator did not answer in time"},
    },
    openapi_extra=body_schema(ReleaseIn),
)
async def release(request: Request, gateway: GatewayDep, store: StoreDep) -> JSONResponse:
    """Release every session gathered so far (and every session with new events) as a
    batch. The same ``release_id`` always answers the same ``batch_id``.

    Answers 200 once every partition has written its part, or 202 with status
    ``releasing`` if that takes longer than ``CLICKSTREAM_RELEASE_WAIT_SECONDS``.
    """
    body = await parse_body(request, gateway.models.ReleaseIn)
    settings = gateway.settings
    started = time.monotonic()
    deadline = started + settings.release_wait_seconds
    batch = await asyncio.to_thread(store.find_by_release, body.release_id)
    if batch is None:
        request_id = uuid.uuid4().hex
        message = gateway.messages.release_request(
            body.release_id, body.min_idle_seconds, request_id
        )
        await gateway.publisher.publish([message])
        # However short the wait, give the coordinator time to name the batch.
        named_by = max(deadline, started + settings.publish_timeout_seconds)
        batch = await poll(lambda: store.find_by_request(request_id), named_by, _POLL_SECONDS)
        if batch is None:
            raise HTTPException(
                status_code=503,
                detail="the release coordinator did not answer in time; retry with the same "
                "release_id",
                headers={"Retry-After": str(settings.retry_after_seconds)},
            )
    if batch.status == RELEASING:
        batch_id = batch.batch_id
        finished = await poll(
            lambda: _finished(store.get(ObjectId(batch_id))), deadline, _POLL_SECONDS
        )
        batch = finished or batch
    if batch.status == EMPTY:
        raise HTTPException(status_code=404, detail=NOTHING_TO_RELEASE)
    status_code = 202 if batch.status == RELEASING else 200
    return JSONResponse(status_code=status_code, content=batch.public())


@router.get("/batch", responses={404: {"description": "No such batch"}})
def get_batch(batch_id: BatchId, store: StoreDep) -> BatchOut:
    """A batch's status, counts, release_id and timestamps."""
    return BatchOut(**_existing(store, batch_id).public())


@router.get(
    "/batch/sessions",
    responses={
        404: {"description": "No such batch"},
        410: {"description": "The batch expired (CLICKSTREAM_BATCH_RETENTION_DAYS)"},
    },
)
def batch_sessions(
    batch_id: BatchId,
    store: StoreDep,
    after_number: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    events_limit: Annotated[int, Query(ge=0, le=10000)] = 100,
) -> BatchSessionsPage:
    """A page of the batch's sessions, by ``session_number``: pass the answer's
    ``last_number`` as ``after_number`` to get the next page."""
    batch = _existing(store, batch_id)
    if batch.expired:
        raise HTTPException(
            status_code=410, detail=f"batch {batch_id} is {batch.status}: its sessions are gone"
        )
    sessions = store.sessions_page(ObjectId(batch.batch_id), after_number, limit, events_limit)
    last_number = sessions[-1]["session_number"] if sessions else after_number
    return BatchSessionsPage.model_validate(
        {"batch_id": batch.batch_id, "last_number": last_number, "sessions": sessions}
    )


def _existing(store: BatchStore, batch_id: str) -> Batch:
    batch = store.get(ObjectId(batch_id))
    if batch is None or batch.status == EMPTY:
        raise HTTPException(status_code=404, detail=f"no batch {batch_id}")
    return batch


def _finished(batch: Batch | None) -> Batch | None:
    return batch if batch is not None and batch.status != RELEASING else None

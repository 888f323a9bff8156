"""Forgetting a user: the operators' erasure endpoints."""

import asyncio
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from batches.erasures import FORGETTING, Erasure, ErasureStore
from producers.gateway.deps import GatewayDep, StoreDep
from producers.gateway.polling import poll
from producers.gateway.refusals import REFUSALS
from producers.gateway.request_body import body_schema, parse_body
from producers.models import ErasureOut, ForgetIn

router = APIRouter(prefix="/api/v1/clickstream/internal/users", tags=["users"])

_POLL_SECONDS = 0.1


@router.post(
    "/forget",
    response_model=ErasureOut,
    responses={
        **REFUSALS,
        202: {"model": ErasureOut, "description": "Still forgetting; it completes on its own"},
    },
    openapi_extra=body_schema(ForgetIn),
)
async def forget(request: Request, gateway: GatewayDep, store: StoreDep) -> JSONResponse:
    """Erase every session of a user: from the stream's tables, from every released batch
    (their counts and content digests follow) and from the releases to come.

    Answers 200 with the receipt once done, or 202 with status ``forgetting`` after
    ``CLICKSTREAM_RELEASE_WAIT_SECONDS``: read it again by its ``request_id``.
    """
    body = await parse_body(request, gateway.models.ForgetIn)
    settings = gateway.settings
    deadline = time.monotonic() + settings.release_wait_seconds
    request_id = uuid.uuid4().hex
    await gateway.publisher.publish([gateway.messages.forget_request(body.user_id, request_id)])
    erasures = ErasureStore(store)

    def done() -> Erasure | None:
        receipt = erasures.get(request_id)
        return receipt if receipt is not None and receipt.status != FORGETTING else None

    receipt = await poll(done, deadline, _POLL_SECONDS) or await asyncio.to_thread(
        erasures.get, request_id
    )
    if receipt is None:  # not opened yet: say what to ask for
        receipt = Erasure(
            request_id, FORGETTING, int(time.time() * 1000), settings.topic_partitions, {}
        )
    status_code = 202 if receipt.status == FORGETTING else 200
    return JSONResponse(status_code=status_code, content=receipt.public())


@router.get("/forget", responses={404: {"description": "No such request"}})
def forget_receipt(request_id: Annotated[str, Query(max_length=64)], store: StoreDep) -> ErasureOut:
    """The receipt of a forget request: its progress, then what was removed where."""
    receipt = ErasureStore(store).get(request_id)
    if receipt is None:
        raise HTTPException(status_code=404, detail=f"no forget request {request_id}")
    return ErasureOut(**receipt.public())

"""Liveness and readiness."""

import logging

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from producers.gateway.deps import GatewayDep

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Kafka is not reachable"}})
async def ready(gateway: GatewayDep) -> JSONResponse:
    """Kafka is reachable and has the topics the gateway writes."""
    try:
        missing = await run_in_threadpool(gateway.publisher.missing_topics, gateway.topics.ingest())
    except Exception as exc:  # noqa: BLE001 - any failure to reach Kafka means not ready
        logger.warning("readiness check failed error=%s", exc)
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": str(exc)})
    if missing:
        detail = f"missing topics: {', '.join(missing)}"
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": detail})
    return JSONResponse(content={"status": "ready"})

"""Liveness and readiness."""

import logging

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from producers.gateway.deps import GatewayDep
from producers.gateway.drain import is_draining

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={
        503: {
            "description": "Kafka is not reachable, no producer can publish, or the gateway "
            "is draining (stopping on SIGTERM)"
        }
    },
)
async def ready(gateway: GatewayDep) -> JSONResponse:
    """A producer can publish: Kafka is reachable, has the topics the gateway writes (or did
    less than ``CLICKSTREAM_READY_GRACE_SECONDS`` ago), and the producer has not failed for
    good (it is being replaced). With
    ``CLICKSTREAM_READY_REQUIRES_WORKER`` a stream worker must be ready too. Not ready
    either once SIGTERM came: the gateway is draining."""
    if is_draining():
        return JSONResponse(status_code=503, content={"status": "draining"})
    detail = gateway.publisher.unavailable()
    if detail is None:
        try:
            missing = await run_in_threadpool(
                gateway.publisher.missing_topics, gateway.topics.ingest()
            )
        except Exception as exc:  # noqa: BLE001 - any failure to reach Kafka means not ready
            failure: str | None = str(exc)
        else:
            failure = f"missing topics: {', '.join(missing)}" if missing else None
        # A blip of the metadata check is given the grace; a publish Kafka left
        # unacknowledged for the publish timeout has shown the failure lasts.
        failing = failure is not None and gateway.publisher.failing
        detail = failure if failing else gateway.kafka_grace.judge(failure)
    if detail is None and gateway.settings.ready_requires_worker:
        detail = await gateway.workers.ready()
    if detail is not None:
        logger.warning("not ready detail=%s", detail)
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": detail})
    return JSONResponse(content={"status": "ready"})

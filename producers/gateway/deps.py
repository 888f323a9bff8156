"""Dependencies of the routes: the gateway's long-lived clients, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request

from batches.store import BatchStore

if TYPE_CHECKING:
    from clickstream.settings import Settings
    from producers.gateway.readiness import ReadinessGrace
    from producers.gateway.workers import WorkerClient
    from producers.grouping import GroupingPublisher
    from producers.ingest import IngestMessages
    from producers.models import RequestModels
    from producers.publisher import KafkaPublisher
    from schemas import Topics


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the routes use: settings, topic names, message builder, publishers (one that
    groups the requests of a partition), and the readers of the stream's tables and of the
    MongoDB batches."""

    settings: Settings
    models: RequestModels
    topics: Topics
    messages: IngestMessages
    publisher: KafkaPublisher
    grouping: GroupingPublisher
    workers: WorkerClient
    store: BatchStore | None
    kafka_grace: ReadinessGrace


# The dependencies are coroutines although they never wait: FastAPI runs a plain function
# in its thread pool, a thread hop per dependency per request (a seventh of the gateway's
# interpreter time with single events, py-spy: make profile).


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_store(request: Request) -> BatchStore:
    store = (await get_gateway(request)).store
    if store is None:
        raise HTTPException(
            status_code=503, detail="MongoDB is not configured (CLICKSTREAM_MONGODB_URI)"
        )
    return store


StoreDep = Annotated[BatchStore, Depends(get_store)]

"""The gateway's FastAPI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Security
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from batches.store import BatchStore
from clickstream.settings import Settings, get_settings
from clickstream.shutdown import close_within
from producers.gateway.body_limit import BodySizeLimit
from producers.gateway.deps import Gateway
from producers.gateway.errors import add_error_handlers
from producers.gateway.fast_ingest import FastIngest
from producers.gateway.metrics import GatewayMetrics, MeteredPublisher
from producers.gateway.readiness import ReadinessGrace
from producers.gateway.routes import batches, health, sessions, users
from producers.gateway.security import (
    INGEST_REFUSAL,
    INTERNAL_REFUSAL,
    PublicCors,
    log_security,
    require_ingest_key,
    require_internal_token,
)
from producers.gateway.workers import WorkerClient
from producers.grouping import GroupingPublisher
from producers.ingest import IngestMessages
from producers.models import Limits, request_models
from schemas import AvroCodec, Topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pydantic import BaseModel

    from producers.publisher import KafkaPublisher
    from schemas import JsonObject

logger = logging.getLogger(__name__)

# A gone or paused mongod must not hold the stop (see close_within).
_STORE_CLOSE_SECONDS = 1.5
# What the broker has not acknowledged by then was answered 503 or cut: clients retry it.
_PUBLISHER_CLOSE_SECONDS = 2.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway. Kafka is reached at ``settings.kafka_bootstrap``.

    Args:
        settings: default ``get_settings()``, read from ``CLICKSTREAM_*`` variables.
    """
    settings = settings or get_settings()
    topics = Topics(settings.topic_prefix)
    metrics = GatewayMetrics()
    # Requests are validated with the limits of these settings, not of the environment.
    models = request_models(Limits.from_settings(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        publisher = MeteredPublisher(
            settings.kafka_producer_config(), settings.publish_timeout_seconds, metrics
        )
        workers = WorkerClient(settings.worker_urls, settings.worker_request_timeout_seconds)
        log_security(
            len(settings.internal_tokens), len(settings.ingest_keys), settings.cors_origins
        )
        mongodb_url = settings.mongodb_url
        store = BatchStore.from_settings(settings) if mongodb_url else None
        codec = AvroCodec()
        app.state.gateway = Gateway(
            settings=settings,
            models=models,
            topics=topics,
            messages=IngestMessages.from_settings(codec, settings),
            publisher=publisher,
            grouping=GroupingPublisher(
                publisher, codec, topics, _partitions_to_group(publisher, topics, settings)
            ),
            workers=workers,
            store=store,
            kafka_grace=ReadinessGrace(settings.ready_grace_seconds),
        )
        try:
            yield
        finally:
            publisher.close(timeout=_PUBLISHER_CLOSE_SECONDS)
            await workers.close()
            if store is not None:
                close_within(store.close, _STORE_CLOSE_SECONDS, "mongodb")

    app = FastAPI(
        title="Clickstream",
        version="0.1.0",
        summary="Search sessions and their clicks, published to Kafka for fine-tuning.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        # Outermost, so preflights are answered before anything else runs.
        app.add_middleware(PublicCors, origins=settings.cors_origins)
    add_error_handlers(app, settings.retry_after_seconds)
    if settings.ingest_keys:
        app.include_router(
            sessions.ingest_router,
            dependencies=[Security(require_ingest_key)],
            responses=INGEST_REFUSAL,
        )
    else:
        app.include_router(sessions.ingest_router)
    app.include_router(sessions.router)
    for internal in (batches.router, users.router):
        app.include_router(
            internal, dependencies=[Security(require_internal_token)], responses=INTERNAL_REFUSAL
        )
    app.include_router(health.router)
    _document_request_bodies(
        app,
        [models.SessionIn, models.EventsIn, models.SessionRef, models.ReleaseIn, models.ForgetIn],
        settings.max_id_length,
    )
    metrics.instrument(app)  # its middleware counts every answer the app gives
    # Outermost: the ingest routes answered before any other layer (counted alike).
    app.add_middleware(FastIngest, state=app.state, settings=settings, metrics=metrics)
    return app


def _partitions_to_group(
    publisher: KafkaPublisher, topics: Topics, settings: Settings
) -> int | None:
    """The partition count to group requests by, if the broker's topics have the one the
    settings say (grouping needs to know a session's partition); else None: no grouping."""
    wanted = settings.topic_partitions
    found = {topic: publisher.partition_count(topic) for topic in topics.ingest()}
    if all(count == wanted for count in found.values()):
        return wanted
    logger.warning(
        "requests are not grouped: partitions of the ingest topics %s, settings say %s "
        "(CLICKSTREAM_TOPIC_PARTITIONS)",
        found,
        wanted,
    )
    return None


def _document_request_bodies(
    app: FastAPI, models: list[type[BaseModel]], max_id_length: int
) -> None:
    """Routes parse their bodies themselves (see request_body.py): add the models' schemas,
    with the seed's examples, to the OpenAPI document FastAPI generates."""

    def openapi() -> JsonObject:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            _, definitions = models_json_schema(
                [(model, "validation") for model in models],
                ref_template="#/components/schemas/{model}",
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(definitions.get("$defs", {}))
            session_get = document["paths"]["/api/v1/clickstream/session"]["get"]
            for parameter in session_get["parameters"]:
                if parameter["name"] == "session_id":
                    # Checked by the route with the settings' limit (see routes/sessions.py).
                    parameter["schema"]["maxLength"] = max_id_length
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""Serving the gateway with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from clickstream.settings import Settings


def serve(settings: Settings) -> None:
    """Serve the API in the foreground until SIGINT or SIGTERM, then drain and return.

    The app is built by each uvicorn process from the environment (``CLICKSTREAM_*``).
    """
    uvicorn.run(
        "producers.gateway.app:create_app",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=settings.http_workers,
        access_log=settings.http_access_log,
        log_config=None,
        # Requests still running then (a release waiting for its batch, a publish waiting
        # for an unreachable broker) are cut: their clients retry. Stops within 10 s.
        timeout_graceful_shutdown=5,
    )

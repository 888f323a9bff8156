"""Serving the gateway with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from clickstream.settings import Settings


def serve(settings: Settings, on_exit_signal: Callable[[], None] | None = None) -> None:
    """Serve the API in the foreground until SIGINT or SIGTERM, then drain and return.

    The app is built by each uvicorn process from the environment (``CLICKSTREAM_*``).

    Args:
        on_exit_signal: called (from the signal handler: it must not block) as soon as
            SIGINT or SIGTERM arrives, so that what runs beside the gateway stops at the
            same time (``clickstream run``'s worker). Needs ``CLICKSTREAM_HTTP_WORKERS=1``.
    """
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.http_host,
        "port": settings.http_port,
        "workers": settings.http_workers,
        "access_log": settings.http_access_log,
        "log_config": None,
        # Requests still running then (a release waiting for its batch, a publish waiting
        # for an unreachable broker) are cut: their clients retry. Stops within 10 s.
        "timeout_graceful_shutdown": 5,
    }
    app = "producers.gateway.app:create_app"
    if on_exit_signal is None or settings.http_workers > 1:
        uvicorn.run(app, **options)
    else:
        _Server(uvicorn.Config(app, **options), on_exit_signal).run()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit_signal()
        super().handle_exit(sig, frame)

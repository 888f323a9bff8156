"""Serving the gateway with uvicorn, and its graceful drain."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from producers.gateway.app import create_app
from producers.gateway.drain import begin_drain

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

# The drain delay and the wait for requests in flight share this, so that with the producer's
# flush (2 s) and MongoDB's close (1.5 s) the gateway stops within 10 s.
_DRAIN_AND_GRACE_SECONDS = 5.0
_MIN_GRACE_SECONDS = 1.0


def serve(settings: Settings, on_exit_signal: Callable[[], None] | None = None) -> None:
    """Serve the API in the foreground until SIGINT or SIGTERM, then drain and return.

    The drain: ``/ready`` answers 503 at once, requests are still served for
    ``CLICKSTREAM_DRAIN_SECONDS`` (load balancers stop sending meanwhile), then the
    gateway stops listening, lets requests in flight finish, flushes its producer and
    returns. A second SIGINT skips the delay. With ``CLICKSTREAM_HTTP_WORKERS`` > 1,
    uvicorn's supervisor passes the signal to each process, which stops listening at once
    (no delay, ``/ready`` not turned first); requests in flight still finish.

    With one HTTP worker the app is built here from ``settings``. With more, uvicorn starts
    processes that each build it from an import string: they get ``settings`` through the
    environment (``CLICKSTREAM_*``), the only way uvicorn passes anything to them.

    Args:
        on_exit_signal: called (from the signal handler: it must not block) as soon as
            SIGINT or SIGTERM arrives, so that what runs beside the gateway stops at the
            same time (``clickstream run``'s worker). Needs ``CLICKSTREAM_HTTP_WORKERS=1``.
    """
    grace = max(_MIN_GRACE_SECONDS, _DRAIN_AND_GRACE_SECONDS - settings.drain_seconds)
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "workers": settings.http_workers,
        "access_log": settings.http_access_log,
        "log_config": None,
        # Requests still running then (a release waiting for its batch, a publish waiting
        # for an unreachable broker) are cut: their clients retry.
        "timeout_graceful_shutdown": grace,
    }
    if settings.http_workers > 1:
        os.environ.update(settings.environment())
        uvicorn.run("producers.gateway.app:create_app", factory=True, **options)
        return
    app = create_app(settings)
    server = DrainingServer(uvicorn.Config(app, **options), settings.drain_seconds, on_exit_signal)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # uvicorn raises the signal again once it has stopped: exit 0 then, not by the signal.
        signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, on the first SIGINT or SIGTERM, turns ``/ready`` to 503 and
    keeps serving ``drain_seconds`` before uvicorn's own graceful shutdown starts."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain_seconds: float,
        on_exit_signal: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._on_exit_signal = on_exit_signal
        self._drain_ends: float | None = None
        self._drain_signal = signal.SIGTERM
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags (no logging, which takes locks).
        first = self._drain_ends is None
        if first:
            begin_drain()
            self._drain_ends = time.monotonic() + self._drain_seconds
            self._drain_signal = signal.Signals(sig)
            if self._on_exit_signal is not None:
                self._on_exit_signal()
        if not first or self._drain_seconds == 0:
            # A second signal stops at once.
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_ends is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                logger.info(
                    "draining signal=%s seconds=%s", self._drain_signal.name, self._drain_seconds
                )
            if time.monotonic() >= self._drain_ends:
                super().handle_exit(self._drain_signal, None)
        return await super().on_tick(counter)

"""``clickstream worker``: one stream worker process, with its release coordinator."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING

import faust
import uvloop

from batches.store import BatchStore
from clickstream.shutdown import close_within
from schemas import AvroCodec
from stream_app.app import Leadership, create_app
from stream_app.coordinator import ReleaseCoordinator
from stream_app.failures import EXIT_HANDLER_FAILED, FailurePolicy

if TYPE_CHECKING:
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

_STOP_DEADLINE_SECONDS = 6.0
_COORDINATOR_STOP_SECONDS = 1.5
_STORE_CLOSE_SECONDS = 1.5


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGINT or SIGTERM. Kafka and MongoDB come from the settings."""
    # uvloop: the event loop and socket writes in C, a tenth more messages a second.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    store = BatchStore.from_settings(settings)
    store.ensure_indexes()
    avro = AvroCodec()
    failures = FailurePolicy(settings.worker_retry_seconds)
    app = create_app(settings, store, avro, failures)
    coordinator = ReleaseCoordinator(settings, store, avro, Leadership(app), failures.stop)
    coordinator.start()
    try:
        _Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        # Bounded: with the broker gone the coordinator may sit in a 30 s Kafka call (its
        # thread is a daemon, abandoned at exit; the next leader fences its transaction).
        coordinator.stop(timeout=_COORDINATOR_STOP_SECONDS)
        close_within(store.close, _STORE_CLOSE_SECONDS, "mongodb")
        if failures.error is not None:
            # Stopped by a message it could not handle: exit non-zero so it is restarted.
            raise SystemExit(EXIT_HANDLER_FAILED)


class _Worker(faust.Worker):
    """A faust worker that stops within ``_STOP_DEADLINE_SECONDS`` of SIGTERM or SIGINT.

    The last resort, once every known wait is bounded: with the broker gone, faust's final
    offset commit retries until a group coordinator answers, which may be never. Exiting
    then is a crash as far as Kafka knows: uncommitted messages are read again on restart.
    """

    def _on_sigterm(self) -> None:
        _exit_after(_STOP_DEADLINE_SECONDS)
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        _exit_after(_STOP_DEADLINE_SECONDS)
        super()._on_sigint()


def _exit_after(seconds: float) -> None:
    def give_up() -> None:
        logger.error("worker did not stop in time, exiting seconds=%s", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()

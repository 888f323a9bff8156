"""``clickstream worker``: one stream worker process, with its release coordinator."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faust

from clickstream.batch_store import BatchStore
from schemas import AvroCodec
from stream_app.app import Leadership, create_app
from stream_app.coordinator import ReleaseCoordinator
from stream_app.failures import EXIT_HANDLER_FAILED, FailurePolicy

if TYPE_CHECKING:
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGINT or SIGTERM. Kafka and MongoDB come from the settings."""
    store = BatchStore.from_settings(settings)
    store.ensure_indexes()
    avro = AvroCodec()
    failures = FailurePolicy(settings.worker_retry_seconds)
    app = create_app(settings, store, avro, failures)
    coordinator = ReleaseCoordinator(settings, store, avro, Leadership(app))
    coordinator.start()
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        coordinator.stop()
        store.close()
        if failures.error is not None:
            # Stopped by a message it could not handle: exit non-zero so it is restarted.
            raise SystemExit(EXIT_HANDLER_FAILED)

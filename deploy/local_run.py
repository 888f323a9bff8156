"""``clickstream run``: the whole pipeline on one machine, in the foreground.

Starts the local servers unless external ones are configured, creates the topics, starts
one stream worker and serves the API. Ctrl-C or SIGTERM stops everything started here, by
pid: the gateway first, then the worker, then the servers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import TYPE_CHECKING

from clickstream.settings import Settings, get_settings
from deploy.kafka_topics import ensure_topics
from deploy.local_servers import LocalServerError, LocalWorker, local_servers, port_in_use
from producers.gateway.server import serve

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

logger = logging.getLogger(__name__)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_locally(settings: Settings) -> None:
    """Run the pipeline until interrupted."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if port_in_use(settings.http_host, settings.http_port):
        raise LocalServerError(
            f"gateway: port {settings.http_port} on {settings.http_host} is already in use "
            "(choose another with CLICKSTREAM_HTTP_PORT)"
        )
    try:
        with local_servers(settings) as (bootstrap, mongodb_uri):
            # Processes started from here read the same servers from the environment.
            os.environ["CLICKSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
            os.environ["CLICKSTREAM_MONGODB_URI"] = mongodb_uri
            get_settings.cache_clear()
            runtime = get_settings()
            ensure_topics(runtime)
            with LocalWorker(runtime.data_dir, runtime.worker_web_port) as worker:
                logger.info("worker ready url=%s log=%s", worker.address, worker.log_file)
                _write_run_file(runtime, bootstrap, mongodb_uri)
                logger.info(
                    "serving url=http://%s:%s kafka=%s mongodb=%s",
                    runtime.http_host,
                    runtime.http_port,
                    bootstrap,
                    mongodb_uri,
                )
                serve(runtime)
    except KeyboardInterrupt:
        logger.info("interrupted, stopped")
    finally:
        run_file(settings).unlink(missing_ok=True)


def run_file(settings: Settings) -> Path:
    """Where a running ``clickstream run`` says which servers it uses."""
    return settings.data_dir / "run.json"


def _write_run_file(settings: Settings, bootstrap: str, mongodb_uri: str) -> None:
    document = {
        "pid": os.getpid(),
        "http_url": f"http://{settings.http_host}:{settings.http_port}",
        "kafka_bootstrap": bootstrap,
        "mongodb_uri": mongodb_uri,
    }
    run_file(settings).write_text(json.dumps(document, indent=2))

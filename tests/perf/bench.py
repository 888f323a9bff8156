"""``make bench``: the pipeline as a user runs it, beside the design it replaces, in one run.

For each load (``single``: 1 event per request, ``batch100``: 100 events per request,
``sessions``: session registrations), each at 4 and 32 connections:

- ``clickstream run`` (gateway, worker, local broker and mongod, all running) is started as
  a subprocess with a data directory and ports of its own, loaded by wrk (installed with
  apt-get if missing; else the Python generator of ``tests/perf/load.py``) in a process of
  its own for ``BENCH_SECONDS``, then stopped by SIGTERM. Every request carries ids new in
  the run; events go to sessions registered (on Kafka) before the load. After the load,
  the worker's ``/metrics`` is read until its consumer lag is 0: that time is the cell's
  ``catch_up_s``, and a cell whose worker took longer than 5 s was measured while the
  worker lagged (``lagging`` in the results).
- ``tests/perf/baseline_app.py`` (one uvicorn process, its MongoDB writes) gets the same loads.

Then the stream worker's scenarios, on a broker of their own: the latency from a gateway's
2xx to the session showing the events (``e2e_p99_ms``), sessions of 5 single-event messages
published straight to Kafka until joined (``stream_events_per_s``), a release of them all
(``release_sessions_per_s``), and the worker's memory with them and once they were retired.

Writes ``tests/perf/results.json`` and the README's table (``python -m tests.perf.bench
table`` rewrites the table from the file). Environment: ``BENCH_SECONDS`` (15) per cell;
``BENCH_RELEASE_SESSIONS`` (100,000) sessions of 5 events released at once;
``BENCH_POOL_SESSIONS`` (10,000) sessions the events loads click in;
``BENCH_GATEWAY_PROCESSES`` (unset: the default of ``clickstream run``);
``BENCH_LOAD_GENERATOR`` (``wrk``, or ``python`` for the fallback);
``BENCH_CATCH_UP_TIMEOUT`` (600) seconds to wait for a worker to catch up.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from clickstream.log import configure_logging
from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from deploy.local.servers import (
    LOOPBACK,
    LocalGateway,
    LocalHttpProcess,
    LocalKafka,
    LocalMongo,
    LocalWorker,
    free_port,
)
from tests.perf.load import register_sessions
from tests.perf.processes import CpuShares, run_roles

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("results.json")
WRK_SCRIPTS = Path(__file__).with_name("wrk")
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- bench:start -->", "<!-- bench:end -->"
RELEASE_PATH = "/api/v1/clickstream/internal/batch/release"
BATCH_PATH = "/api/v1/clickstream/internal/batch"
E2E_EVENTS_PER_S = 2000
# Events per request of each load; None: session registrations.
LOADS: dict[str, int | None] = {"single": 1, "batch100": 100, "sessions": None}
CONNECTIONS = (4, 32)
CATCH_UP_TARGET_S = 5.0
IDLE_SETTLE_SECONDS = 5.0
IDLE_SECONDS = 20.0
MILLION = 1_000_000
# Sessions published at a time in the million scenario, each step once the last is joined.
MILLION_STEP = 50_000
# A fine-tuning job waiting for batches (the idle cost of BatchReader.follow).
_FOLLOWER = (
    "from consumers.batch_reader import BatchReader\n"
    "with BatchReader(group_id='bench-idle') as reader:\n"
    "    for _ in reader.follow():\n"
    "        pass\n"
)


class BaselineServer(LocalHttpProcess):
    """The replaced design (``tests/perf/baseline_app.py``), as it ships: one uvicorn process."""

    name = "baseline"
    port_setting = "BASELINE_PORT"
    ready_path = "/docs"

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            "-m",
            "uvicorn",
            "tests.perf.baseline_app:app",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--no-access-log",
        ]


class PipelineRun(LocalHttpProcess):
    """``clickstream run``: local broker, mongod, worker and gateway; ready once the gateway
    answers (it starts after the worker is ready). Stopped by SIGTERM only, and waited for:
    it stops the local broker, which must never be SIGKILLed."""

    name = "run"
    port_setting = "CLICKSTREAM_HTTP_PORT"
    ready_path = "/ready"
    stop_timeout = 120.0
    kill_after_stop_timeout = False
    kafka_bootstrap = ""  # its broker, once started

    def command(self) -> list[str]:
        return [str(self.binary()), "-m", "deploy.cli", "run"]


class WorkerMetrics:
    """A worker's ``/metrics``: consumer lag, messages handled, table entries."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/metrics"

    def scrape(self) -> dict[str, float] | None:
        """``lag`` (summed over partitions; absent before the first fetch), ``handled``
        (source messages), ``sessions`` (table entries), ``rss_mb``; None if it does not
        answer (e.g. while restarting)."""
        try:
            text = httpx.get(self.url, timeout=10).text
        except httpx.HTTPError:
            return None
        figures: dict[str, float] = {"handled": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "clickstream_worker_consumer_lag":
                    figures["lag"] = figures.get("lag", 0.0) + sample.value
                elif sample.name == "clickstream_worker_messages_total":
                    figures["handled"] += sample.value
                    kind = f"kind:{sample.labels['kind']}"
                    figures[kind] = figures.get(kind, 0.0) + sample.value
                elif sample.name == "clickstream_worker_table_entries":
                    figures[sample.labels["table"]] = sample.value
                elif sample.name == "process_resident_memory_bytes":
                    figures["rss_mb"] = sample.value / 1024**2
        return figures

    def caught_up(self, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` (monotonic) until the worker had handled everything: lag 0
        on two scrapes 0.25 s apart with no message handled in between (a lag read just as
        the worker drained a fetch, before the next fetch told it the new end, is not
        enough). None if that did not happen within ``timeout``."""
        previous: tuple[float, float] | None = None
        while True:
            at = time.monotonic()
            figures = self.scrape()
            if figures is not None and figures.get("lag") == 0:
                if previous is not None and previous[1] == figures["handled"]:
                    return max(previous[0] - since, 0.0)
                previous = (at, figures["handled"])
            else:
                previous = None
            if at - since > timeout:
                return None
            time.sleep(0.25)


class LagSampler(threading.Thread):
    """The worker's lag once a second while a load runs."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.metrics = metrics
        self.samples: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            figures = self.metrics.scrape()
            if figures is not None and "lag" in figures:
                self.samples.append(figures["lag"])

    def stop(self) -> list[float]:
        self.stopping.set()
        self.join()
        return self.samples


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadGenerator:
    """wrk (Debian's package, installed here if missing), or the Python generator."""

    def __init__(self) -> None:
        self.kind = self._choose()

    @staticmethod
    def _choose() -> str:
        if os.environ.get("BENCH_LOAD_GENERATOR", "wrk") == "python":
            logger.info("load generator=python reason=BENCH_LOAD_GENERATOR")
            return "python"
        if shutil.which("wrk"):
            return "wrk"
        if os.geteuid() == 0 and shutil.which("apt-get"):
            logger.info("installing wrk with apt-get")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for command in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "wrk"],
            ):
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
                if done.returncode != 0:
                    logger.warning(
                        "apt-get failed command=%s error=%s", command, done.stderr[-500:]
                    )
                    break
            if shutil.which("wrk"):
                return "wrk"
        logger.warning(
            "load generator=python reason='wrk missing and not installable' "
            "(its figures are lower than wrk's: the generator shares the cores)"
        )
        return "python"

    def run(
        self, port: int, load: str, connections: int, seconds: float, prefix: str, pool: int
    ) -> dict[str, Any]:
        per_request = LOADS[load] or 1
        cpu_before = child_cpu_seconds()
        if self.kind == "wrk":
            result = self._wrk(port, load, connections, seconds, prefix, pool, per_request)
        else:
            result = self._python(port, load, connections, seconds, prefix, pool, per_request)
        result["load_cpu_cores"] = (child_cpu_seconds() - cpu_before) / result["seconds"]
        result["generator"] = self.kind
        return result

    def _wrk(
        self,
        port: int,
        load: str,
        connections: int,
        seconds: float,
        prefix: str,
        pool: int,
        per_request: int,
    ) -> dict[str, Any]:
        script, args = (
            ("sessions.lua", [prefix])
            if load == "sessions"
            else ("events.lua", [prefix, str(per_request), str(pool)])
        )
        command = [
            "wrk",
            f"--threads={min(2, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, round(seconds))}s",
            "--timeout=30s",
            f"--script={WRK_SCRIPTS / script}",
            f"http://{LOOPBACK}:{port}",
            "--",
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        raw = json.loads(line.split(" ", 1)[1])
        elapsed = raw["duration_us"] / 1e6
        failed = raw["status_errors"] + raw["timeouts"] + raw["read_errors"] + raw["write_errors"]
        ok = max(raw["requests"] - raw["status_errors"], 0)
        return {
            "requests_ok": ok,
            "requests_failed": failed,
            "seconds": elapsed,
            "requests_per_s": ok / elapsed,
            "events_per_s": ok * per_request / elapsed,
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "wrk": raw,
        }

    def _python(
        self,
        port: int,
        load: str,
        connections: int,
        seconds: float,
        prefix: str,
        pool: int,
        per_request: int,
    ) -> dict[str, Any]:
        spec = {
            "scenario": "closed_loop",
            "host": LOOPBACK,
            "port": port,
            "seconds": seconds,
            "connections": connections,
            "load": load,
            "prefix": prefix,
            "pool": pool,
            "events_per_request": per_request,
        }
        return run_load(spec)


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """One load of ``tests/perf/load.py``, in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.perf.load", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load {spec['scenario']} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    logger.info("load scenario=%s result=%s", spec["scenario"], result)
    return result


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now, or at its highest so far with ``field="VmHWM"``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def inherited_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}


class Bench:
    def __init__(
        self, seconds: float, external: Settings, mongodb_uri: str, data_dir: Path
    ) -> None:
        self.seconds = seconds
        self.external_bootstrap = external.kafka_bootstrap
        self.external_mongodb = external.mongodb_url
        self.bootstrap = external.kafka_bootstrap or ""
        self.mongodb_uri = mongodb_uri
        self.data_dir = data_dir
        processes = os.environ.get("BENCH_GATEWAY_PROCESSES")
        self.processes = (
            int(processes) if processes else Settings.model_fields["http_workers"].default
        )
        self.pool = int(os.environ.get("BENCH_POOL_SESSIONS", "10000"))
        self.catch_up_timeout = float(os.environ.get("BENCH_CATCH_UP_TIMEOUT", "600"))
        # The internal endpoints may require a bearer token: everything started here gets one.
        self.token = secrets.token_hex(16)
        self.control_secret = secrets.token_hex(16)  # the workers started outside `run`
        self.generator = LoadGenerator()
        # Settings for every process started here (the profiler's experiments).
        self.extra_env: dict[str, str] = {}
        # The bench's own mongod (the baseline's), for its CPU; None when external.
        self.mongod_pid: int | None = None
        self.broker_pid: int | None = None  # the stream scenarios' local broker
        self.results: dict[str, Any] = {}
        self.lagging: list[str] = []
        self.details: dict[str, Any] = {}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def common_env(self) -> dict[str, str]:
        env = {**inherited_env(), "CLICKSTREAM_INTERNAL_TOKENS": self.token, **self.extra_env}
        if os.environ.get("BENCH_GATEWAY_PROCESSES"):
            env["CLICKSTREAM_HTTP_WORKERS"] = str(self.processes)
        return env

    # -- the pipeline and the baseline under the same loads ----------------------------

    def http_loads(self) -> None:
        for load in LOADS:
            for connections in CONNECTIONS:
                self.baseline_cell(load, connections)
                self.pipeline_cell(load, connections)

    @contextlib.contextmanager
    def pipeline(self, cell: str, load: str) -> Iterator[tuple[PipelineRun, WorkerMetrics, str]]:
        """A fresh ``clickstream run`` for one cell, its session pool registered and joined;
        yields the run, its worker's metrics and the cell's id prefix. Stopped by SIGTERM."""
        directory = self.data_dir / cell
        web_port, kafka_port = free_port(), free_port()
        prefix = uuid.uuid4().hex[:8]
        env = {
            **self.common_env(),
            "CLICKSTREAM_DATA_DIR": str(directory),
            "CLICKSTREAM_WORKER_WEB_PORT": str(web_port),
            "CLICKSTREAM_KAFKA_PORT": str(kafka_port),
        }
        bootstrap = f"{LOOPBACK}:{kafka_port}"
        topic_prefix = "clickstream."
        if self.external_bootstrap:
            bootstrap, topic_prefix = self.external_bootstrap, f"bench-{prefix}."
            env["CLICKSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
            env["CLICKSTREAM_TOPIC_PREFIX"] = topic_prefix
        if self.external_mongodb:
            env["CLICKSTREAM_MONGODB_URI"] = self.external_mongodb
            env["CLICKSTREAM_MONGODB_DATABASE"] = f"bench_{prefix}"
        started = time.monotonic()
        run = PipelineRun(directory, env=env).start(timeout=300)
        run.kafka_bootstrap = bootstrap
        metrics = WorkerMetrics(f"http://{LOOPBACK}:{web_port}")
        try:
            logger.info("pipeline started cell=%s seconds=%.1f", cell, time.monotonic() - started)
            if LOADS[load] is not None:
                # Clicks belong to searches: the events go to sessions registered first.
                register_sessions(
                    bootstrap, topic_prefix, [f"{prefix}-s{n}" for n in range(self.pool)]
                )
            # Every load starts with the worker reading (its partitions assigned, the pool
            # joined): a worker still joining its group when the load begins can wait for
            # minutes on a broker at full load, and the cell would measure that.
            if metrics.caught_up(time.monotonic(), self.catch_up_timeout) is None:
                raise TimeoutError(f"{cell}: the worker did not start reading")
            yield run, metrics, prefix
        finally:
            run.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def pipeline_cell(self, load: str, connections: int) -> None:
        cell = f"pipeline_{load}_c{connections}"
        with self.pipeline(cell, load) as (run, metrics, prefix):
            sampler = LagSampler(metrics)
            sampler.start()
            roles = run_roles(run.pid or 0)
            # The CPU a click costs: the load and the worker's catch-up after it.
            with CpuShares(roles) as spent:
                with CpuShares(roles) as cpu:
                    result = self.generator.run(
                        run.port, load, connections, self.seconds, prefix, self.pool
                    )
                stopped = time.monotonic()
                lags = sampler.stop()
                catch_up = metrics.caught_up(stopped, self.catch_up_timeout)
        result["cores"] = cpu.cores
        result["cpu_seconds"] = spent.seconds
        self._cpu_per_click(cell, load, result)
        result["worker_lag_max"] = max(lags, default=None)
        result["worker_lag_samples"] = lags
        result["catch_up_s"] = catch_up
        self.details[cell] = result
        self.results[f"{cell}_events_per_s"] = round(result["events_per_s"])
        self.results[f"{cell}_p99_ms"] = round(result["p99_ms"], 1)
        self.results[f"{cell}_catch_up_s"] = (
            round(catch_up, 2) if catch_up is not None else self.catch_up_timeout
        )
        if catch_up is None or catch_up > CATCH_UP_TARGET_S:
            self.lagging += [f"{cell}_events_per_s", f"{cell}_p99_ms"]
        logger.info(
            "cell=%s events_per_s=%.0f p99_ms=%.1f failed=%s catch_up_s=%s lag_max=%s",
            cell,
            result["events_per_s"],
            result["p99_ms"],
            result["requests_failed"],
            catch_up,
            result["worker_lag_max"],
        )

    def baseline_cell(self, load: str, connections: int) -> None:
        cell = f"baseline_{load}_c{connections}"
        database = f"baseline_{uuid.uuid4().hex[:8]}"
        env = {
            **inherited_env(),
            "BASELINE_MONGODB_URI": self.mongodb_uri,
            "BASELINE_MONGODB_DATABASE": database,
        }
        server = BaselineServer(self.data_dir / cell, env=env).start()
        roles = {server.pid or 0: "baseline"}
        if self.mongod_pid is not None:
            roles[self.mongod_pid] = "mongod"
        try:
            with CpuShares(roles) as cpu:
                result = self.generator.run(
                    server.port, load, connections, self.seconds, uuid.uuid4().hex[:8], self.pool
                )
        finally:
            server.stop()
            client: MongoClient[dict[str, Any]]
            with MongoClient(self.mongodb_uri) as client:
                client.drop_database(database)
        result["cores"] = cpu.cores
        result["cpu_seconds"] = cpu.seconds
        self._cpu_per_click(cell, load, result)
        self.details[cell] = result
        self.results[f"{cell}_events_per_s"] = round(result["events_per_s"])
        self.results[f"{cell}_p99_ms"] = round(result["p99_ms"], 1)
        logger.info(
            "cell=%s events_per_s=%.0f p99_ms=%.1f failed=%s",
            cell,
            result["events_per_s"],
            result["p99_ms"],
            result["requests_failed"],
        )

    def _cpu_per_click(self, cell: str, load: str, result: dict[str, Any]) -> None:
        """The CPU of every process of the side over the clicks (sessions for ``sessions``)
        it acknowledged."""
        clicks = result["requests_ok"] * (LOADS[load] or 1)
        spent = sum(result["cpu_seconds"].values())
        self.results[f"{cell}_cpu_us_per_click"] = round(spent * 1e6 / max(clicks, 1), 1)

    def idle(self) -> None:
        """What ``clickstream run`` costs with nothing to do, and a BatchReader waiting for
        batches beside it."""
        with self.pipeline("idle", "sessions") as (run, _, _):
            time.sleep(IDLE_SETTLE_SECONDS)
            with CpuShares(run_roles(run.pid or 0)) as cpu:
                time.sleep(IDLE_SECONDS)
            self.results["idle_cores_make_run"] = round(sum(cpu.cores.values()), 3)
            self.details["idle_make_run"] = {"cores": cpu.cores}
            follower = subprocess.Popen(
                [sys.executable, "-c", _FOLLOWER],
                env={**inherited_env(), "CLICKSTREAM_KAFKA_BOOTSTRAP": run.kafka_bootstrap},
                cwd=ROOT,
            )
            try:
                time.sleep(IDLE_SETTLE_SECONDS)
                with CpuShares({follower.pid: "batch_reader"}) as reader:
                    time.sleep(IDLE_SECONDS)
            finally:
                follower.terminate()
                follower.wait(30)
            self.results["idle_cores_batch_reader"] = round(reader.cores["batch_reader"], 3)

    # -- the stream worker's scenarios, on a broker of their own -----------------------

    @contextlib.contextmanager
    def broker(self, name: str) -> Iterator[LocalKafka | None]:
        """A local broker of the scenarios' own, its data deleted after (the local broker
        keeps all its data in one snapshot, and gigabytes of it slow it down). An external
        broker (CLICKSTREAM_KAFKA_BOOTSTRAP) is used as it is."""
        if self.external_bootstrap:
            yield None
            return
        kafka = LocalKafka(self.data_dir / f"kafka-{name}").start()
        self.bootstrap, self.broker_pid = kafka.address, kafka.pid
        try:
            yield kafka
        finally:
            self.broker_pid = None
            kafka.stop()
            shutil.rmtree(kafka.data_dir, ignore_errors=True)

    def fresh(self, name: str, **overrides: Any) -> Settings:
        """Settings on topics and a database of their own, the topics created."""
        prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}."
        settings = Settings(
            kafka_bootstrap=self.bootstrap,
            mongodb_uri=self.mongodb_uri,
            topic_prefix=prefix,
            mongodb_database=prefix.strip(".").replace(".", "_").replace("-", "_"),
            **overrides,
        )
        ensure_topics(settings)
        return settings

    def env(self, settings: Settings, **extra: str) -> dict[str, str]:
        return {
            **inherited_env(),
            **settings.environment(),
            "CLICKSTREAM_LOG_LEVEL": "WARNING",
            "CLICKSTREAM_INTERNAL_TOKENS": self.token,
            "CLICKSTREAM_CONTROL_SECRET": self.control_secret,
            **self.extra_env,
            **extra,
        }

    @contextlib.contextmanager
    def standalone(self) -> Iterator[tuple[Settings, LocalWorker, LocalGateway]]:
        """A worker and a gateway of their own on fresh topics of the current broker."""
        settings = self.fresh("stream")
        worker_dir = self.data_dir / f"worker-{settings.topic_prefix}"
        worker_env = self.env(settings, CLICKSTREAM_WORKER_ID=f"bench-{uuid.uuid4().hex[:6]}")
        worker_env["CLICKSTREAM_DATA_DIR"] = str(worker_dir)
        worker = LocalWorker(worker_dir, env=worker_env).start(timeout=120)
        gateway_env = self.env(
            settings,
            CLICKSTREAM_WORKER_URLS=worker.address,
            CLICKSTREAM_HTTP_WORKERS=str(self.processes),
        )
        gateway = LocalGateway(self.data_dir / f"gateway-{settings.topic_prefix}", env=gateway_env)
        try:
            gateway.start()
            yield settings, worker, gateway
        finally:
            gateway.stop()
            worker.stop()

    def stream_scenarios(self, release_sessions: int) -> None:
        with self.standalone() as (settings, worker, gateway):
            self.end_to_end(gateway)
            self.stream(settings, worker, release_sessions)
            self.release(gateway, worker, release_sessions)
            self.retention(worker)

    def end_to_end(self, gateway: LocalGateway) -> None:
        result = run_load(
            {
                "scenario": "end_to_end",
                "host": LOOPBACK,
                "port": gateway.port,
                "seconds": self.seconds,
                "events_per_s": E2E_EVENTS_PER_S,
                "events_per_request": 10,
                "sample_every": 10,
            }
        )
        self.results["e2e_p99_ms"] = round(result["e2e_p99_ms"], 1)
        self.results["e2e_offered_events_per_s"] = E2E_EVENTS_PER_S
        self.details["end_to_end"] = result

    def stream(self, settings: Settings, worker: LocalWorker, sessions: int) -> None:
        """Sessions of 5 events published straight to Kafka: the time until the worker has
        handled each message (a registration and 5 single-event messages per session)."""
        events_each = 5
        pid = worker.pid or 0
        metrics = WorkerMetrics(worker.address)
        rss_before = rss_mb(pid)
        target = joined(metrics) + sessions * (1 + events_each)
        publish: dict[str, Any] = {}
        roles = {pid: "worker"}
        if self.broker_pid is not None:
            roles[self.broker_pid] = "broker"
        with CpuShares(roles) as cpu:
            started = time.perf_counter()
            publisher = threading.Thread(
                target=lambda: publish.update(
                    run_load(
                        {
                            "scenario": "publish_sessions",
                            "bootstrap": self.bootstrap,
                            "topic_prefix": settings.topic_prefix,
                            "sessions": sessions,
                            "events_each": events_each,
                        }
                    )
                )
            )
            publisher.start()
            deadline = started + 1800
            while joined(metrics) < target:
                if time.perf_counter() > deadline:
                    raise TimeoutError("the worker did not join every message within 30 minutes")
                time.sleep(0.2)
            joined_in = time.perf_counter() - started
            publisher.join()
        rss_after = rss_mb(pid)
        self.results["stream_events_per_s"] = round(sessions * events_each / joined_in)
        self.results["worker_rss_mb_per_100k_sessions"] = round(
            (rss_after - rss_before) * 100_000 / sessions, 1
        )
        self.details["stream"] = {
            "sessions": sessions,
            "events": sessions * events_each,
            "messages_per_s": sessions * (1 + events_each) / joined_in,
            "seconds": joined_in,
            "cores": cpu.cores,
            "publish": publish,
            "worker_rss_mb_before": rss_before,
            "worker_rss_mb_after": rss_after,
        }

    def release(self, gateway: LocalGateway, worker: LocalWorker, sessions: int) -> None:
        roles = {worker.pid or 0: "worker", gateway.pid or 0: "gateway"}
        for pid, role in ((self.broker_pid, "broker"), (self.mongod_pid, "mongod")):
            if pid is not None:
                roles[pid] = role
        with CpuShares(roles) as cpu:
            self._release(gateway, sessions)
        self.details["release"]["cores"] = cpu.cores

    def _release(self, gateway: LocalGateway, sessions: int) -> None:
        started = time.perf_counter()
        answer = httpx.post(
            f"{gateway.address}{RELEASE_PATH}",
            json={"release_id": uuid.uuid4().hex},
            headers=self.auth,
            timeout=1800,
        ).json()
        batch_id = answer["batch_id"]
        while answer["status"] != "released":
            time.sleep(0.1)
            answer = httpx.get(
                f"{gateway.address}{BATCH_PATH}",
                params={"batch_id": batch_id},
                headers=self.auth,
                timeout=30,
            ).json()
        released_in = time.perf_counter() - started
        if answer["session_count"] < sessions:
            raise RuntimeError(f"released {answer['session_count']} of {sessions} sessions")
        self.results["release_sessions"] = answer["session_count"]
        self.results["release_sessions_per_s"] = round(answer["session_count"] / released_in)
        self.details["release"] = {"seconds": released_in, **answer}

    def million(self) -> None:
        """A million live sessions, a click each, joined by one worker with RocksDB state:
        its resident memory at its highest, and how long it takes to serve again after a
        restart.

        The sessions arrive in steps of ``MILLION_STEP``, each published once the worker has
        joined the one before, as a week of sessions arrives: what is measured is the
        memory of holding them. A backlog read at once would measure the local broker
        instead, which ignores ``fetch.max.bytes`` and answers a fetch with everything up
        to the end of the partition (a 60 MB backlog came back as one response): a worker
        catching up on it holds the whole response, whatever its settings say."""
        settings = self.fresh("million")
        worker_dir = self.data_dir / f"worker-{settings.topic_prefix}"
        worker_env = self.env(
            settings,
            CLICKSTREAM_WORKER_ID=f"bench-{uuid.uuid4().hex[:6]}",
            CLICKSTREAM_WORKER_STORE="rocksdb",
            CLICKSTREAM_DATA_DIR=str(worker_dir),
        )
        worker = LocalWorker(worker_dir, env=worker_env).start(timeout=120)
        try:
            metrics = WorkerMetrics(worker.address)
            published = 0
            publish_seconds = 0.0
            started = time.monotonic()
            while published < MILLION:
                step = min(MILLION_STEP, MILLION - published)
                publish_seconds += run_load(
                    {
                        "scenario": "publish_grouped",
                        "bootstrap": self.bootstrap,
                        "topic_prefix": settings.topic_prefix,
                        "sessions": step,
                        "events_each": 1,
                        "group": 500,
                    }
                )["seconds"]
                published += step
                while (metrics.scrape() or {}).get("sessions", 0) < published:
                    if time.monotonic() - started > self.catch_up_timeout:
                        raise TimeoutError("the worker did not join a million sessions in time")
                    time.sleep(0.5)
            joined_in = time.monotonic() - started
            rss = rss_mb(worker.pid or 0)
            peak = rss_mb(worker.pid or 0, "VmHWM")  # the join's working set at its largest
            worker.stop()
            restarted_at = time.monotonic()
            worker = LocalWorker(worker_dir, env=worker_env).start(timeout=self.catch_up_timeout)
            recovered_in = time.monotonic() - restarted_at
            rss_restarted = rss_mb(worker.pid or 0)
        finally:
            worker.stop()
        self.results["worker_rss_mb_per_1m_sessions_rocksdb"] = round(peak, 1)
        self.results["worker_recovery_s_1m_sessions_rocksdb"] = round(recovered_in, 2)
        self.details["million"] = {
            "sessions": MILLION,
            "step_sessions": MILLION_STEP,
            "publish_seconds": publish_seconds,
            "joined_seconds": joined_in,
            "worker_rss_mb": rss,
            "worker_rss_mb_peak": peak,
            "recovery_seconds": recovered_in,
            "worker_rss_mb_restarted": rss_restarted,
        }

    def retention(self, worker: LocalWorker) -> None:
        """The worker's memory once the released sessions left its tables. The same worker
        (its identity, its tables from their changelogs) started again with a retention of
        5 s and a tick every second: with those from the start, the tick's pass over every
        session each second would have slowed the stream and release figures."""
        rss_released = rss_mb(worker.pid or 0)
        worker.stop()
        self._new_disk(worker)
        started = time.monotonic()
        env = {
            **(worker.env or {}),
            "CLICKSTREAM_SESSION_RETENTION_SECONDS": "5",
            "CLICKSTREAM_TICK_INTERVAL_SECONDS": "1",
        }
        restarted = LocalWorker(worker.data_dir, env=env).start(timeout=self.catch_up_timeout)
        try:
            self._retire(restarted, started, rss_released)
        finally:
            restarted.stop()

    def _new_disk(self, worker: LocalWorker) -> None:
        """The same worker on an empty data dir (a new pod, a lost volume): how long until it
        serves again, its state rebuilt from the changelog alone."""
        fresh = self.data_dir / f"{worker.data_dir.name}-new-disk"
        started = time.monotonic()
        moved = LocalWorker(
            fresh, env={**(worker.env or {}), "CLICKSTREAM_DATA_DIR": str(fresh)}
        ).start(timeout=self.catch_up_timeout)
        self.results["worker_recovery_s_100k_sessions_new_disk"] = round(
            time.monotonic() - started, 2
        )
        moved.stop()
        shutil.rmtree(fresh, ignore_errors=True)

    def _retire(self, restarted: LocalWorker, started: float, rss_released: float) -> None:
        recovered_in = time.monotonic() - started
        self.results["worker_recovery_s_100k_sessions"] = round(recovered_in, 2)
        rss_recovered = rss_mb(restarted.pid or 0)
        metrics = WorkerMetrics(restarted.address)
        entries: float | None = None
        while time.monotonic() - started < self.catch_up_timeout:
            figures = metrics.scrape()
            entries = figures.get("sessions") if figures else None
            if entries == 0:
                break
            time.sleep(0.5)
        else:
            logger.warning("sessions not retired in time entries=%s", entries)
        rss = rss_mb(restarted.pid or 0)
        self.results["worker_rss_mb_after_retention"] = round(rss, 1)
        self.details["retention"] = {
            "worker_rss_mb_after_release": rss_released,
            "recovery_seconds": recovered_in,
            "worker_rss_mb_recovered": rss_recovered,
            "seconds_until_retired": time.monotonic() - started - recovered_in,
            "session_entries_left": entries,
            "worker_rss_mb": rss,
        }


def joined(metrics: WorkerMetrics) -> float:
    """Registrations and SessionEvents messages the worker has handled (ticks and markers
    left out)."""
    figures = metrics.scrape() or {}
    return sum(
        figures.get(f"kind:{kind}", 0.0)
        for kind in (
            "SessionRegistered",
            "SessionEvents",
            "SessionRegisteredBatch",
            "SessionEventsBatch",
        )
    )


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2, 1),
        "cpu": model,
        "python": platform.python_version(),
    }


def verdicts(r: dict[str, Any], lagging: list[str]) -> dict[str, bool]:
    """The issues' targets (16 and 18), each a ratio within one run where it compares. A
    rate counts only if the worker kept up."""
    met: dict[str, bool] = {}
    for load in LOADS:
        capacity = f"pipeline_{load}_c32_events_per_s"
        met[capacity] = (
            r[capacity] >= 3 * r[f"baseline_{load}_c32_events_per_s"] and capacity not in lagging
        )
        tail = f"pipeline_{load}_c4_p99_ms"
        met[tail] = r[tail] <= r[f"baseline_{load}_c4_p99_ms"] and tail not in lagging
        for connections in CONNECTIONS:
            key = f"pipeline_{load}_c{connections}_catch_up_s"
            met[key] = r[key] <= CATCH_UP_TARGET_S
            if load != "batch100":
                cpu = f"pipeline_{load}_c{connections}_cpu_us_per_click"
                share = 1 / 3 if connections == 32 else 1 / 2
                met[cpu] = r[cpu] <= share * r[f"baseline_{load}_c{connections}_cpu_us_per_click"]
    met["stream_events_per_s"] = r["stream_events_per_s"] >= 6_000
    met["release_sessions_per_s"] = (
        r["release_sessions_per_s"] >= 10_000 and r["release_sessions"] >= 100_000
    )
    met["e2e_p99_ms"] = r["e2e_p99_ms"] < 2_000
    met["worker_recovery_s_100k_sessions"] = r["worker_recovery_s_100k_sessions"] <= 15
    met["idle_cores_make_run"] = r["idle_cores_make_run"] <= 0.05
    met["idle_cores_batch_reader"] = r["idle_cores_batch_reader"] <= 0.02
    if "worker_rss_mb_per_1m_sessions_rocksdb" in r:
        met["worker_rss_mb_per_1m_sessions_rocksdb"] = (
            r["worker_rss_mb_per_1m_sessions_rocksdb"] <= 500
        )
        met["worker_recovery_s_1m_sessions_rocksdb"] = (
            r["worker_recovery_s_1m_sessions_rocksdb"] <= 15
        )
    return met


def _mark(met: dict[str, bool], key: str) -> str:
    return "" if key not in met else ("yes" if met[key] else "**no**")


def table(document: dict[str, Any]) -> str:
    r, met = document["results"], document["targets_met"]
    lagging = set(document.get("lagging", []))

    def value(key: str, digits: int = 0) -> str:
        text = f"{r[key]:,.{digits}f}"
        return f"{text} (lagged)" if key in lagging else text

    rows = [
        "Events per second (sessions per second for `sessions`) and p99 in ms, for"
        " `pipeline_<load>_c<c>_*` (`clickstream run`) and `baseline_<load>_c<c>_*`;"
        " the pipeline's worker caught up `catch_up_s` after the load stopped.",
        "",
        "| load | conns | pipeline /s | baseline /s | ratio | pipeline p99 | baseline p99"
        " | catch-up s | targets met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for load in LOADS:
        for c in CONNECTIONS:
            p, b = f"pipeline_{load}_c{c}", f"baseline_{load}_c{c}"
            ratio = r[f"{p}_events_per_s"] / max(r[f"{b}_events_per_s"], 1)
            if c == 32:
                target = f"rate >= 3x: {_mark(met, f'{p}_events_per_s')}"
            else:
                target = f"p99 <= baseline: {_mark(met, f'{p}_p99_ms')}"
            target += f"; catch-up <= 5 s: {_mark(met, f'{p}_catch_up_s')}"
            rows.append(
                f"| {load} | {c} | {value(f'{p}_events_per_s')} | {r[f'{b}_events_per_s']:,}"
                f" | {ratio:.2f}x | {value(f'{p}_p99_ms', 1)} | {r[f'{b}_p99_ms']:,.1f}"
                f" | {r[f'{p}_catch_up_s']:,.2f} | {target} |"
            )
    rows += cpu_rows(document["details"], r, met)
    rows += ["", "| figure | value | target | met |", "|---|---:|---|---|"]
    for key, target in (
        ("stream_events_per_s", ">= 6,000 single-event messages/s, one worker"),
        ("release_sessions_per_s", ">= 10,000 on >= 100k sessions"),
        ("release_sessions", "sessions of 5 events released"),
        ("e2e_p99_ms", "< 2,000"),
        ("e2e_offered_events_per_s", "offered load of e2e"),
        ("worker_rss_mb_per_100k_sessions", "resident memory, sessions joined"),
        ("worker_rss_mb_after_retention", "resident memory, once they were retired"),
        ("worker_recovery_s_100k_sessions", "<= 15: restarted, serving again"),
        ("worker_recovery_s_100k_sessions_new_disk", "the same on an empty disk"),
        ("worker_rss_mb_per_1m_sessions_rocksdb", "<= 500: a million live sessions"),
        ("worker_recovery_s_1m_sessions_rocksdb", "<= 15: restarted with them"),
        ("idle_cores_make_run", "<= 0.05: `clickstream run`, no load"),
        ("idle_cores_batch_reader", "<= 0.02: a BatchReader waiting"),
    ):
        if key in r:
            rows.append(f"| `{key}` | {r[key]:,} | {target} | {_mark(met, key)} |")
    m, p = document["machine"], document["parameters"]
    rows.append("")
    rows.append(
        f"Measured {document['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}; BENCH_SECONDS={p['seconds']:g}, load by {p['load_generator']} "
        f"(up to {document['load_cpu_cores_max']:.2f} cores), {p['gateway_processes']} gateway "
        f"process(es), baseline 1 process; (lagged): measured while the worker fell behind."
    )
    return "\n".join(rows)


def cpu_rows(details: dict[str, Any], results: dict[str, Any], met: dict[str, bool]) -> list[str]:
    """CPU per event (per session for ``sessions``) of each process, in microseconds: on
    one machine the cores are shared, so the rate is at most the cores over their sum."""
    if not all("cores" in details.get(f"pipeline_{load}_c32", {}) for load in LOADS):
        return []  # results from before the bench measured it
    roles = ("gateway", "worker", "broker", "baseline", "mongod")
    rows = [
        "",
        "CPU per click (per session for `sessions`) in µs, every process of the side, over the"
        " load and the worker's catch-up after it (`<run>_<load>_c<c>_cpu_us_per_click`); the"
        " targets: the pipeline's at most half the baseline's at 4 connections and a third at 32"
        " (single clicks and registrations):",
        "",
        "| load | conns | pipeline | baseline | ratio | target met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for load in LOADS:
        for c in CONNECTIONS:
            key = f"pipeline_{load}_c{c}_cpu_us_per_click"
            if key not in results:
                continue
            base = results[f"baseline_{load}_c{c}_cpu_us_per_click"]
            ratio = results[key] / max(base, 1e-9)
            rows.append(
                f"| {load} | {c} | {results[key]:,.0f} | {base:,.0f} | {ratio:.2f} |"
                f" {_mark(met, key)} |"
            )
    rows += [
        "",
        "CPU per event (per session for `sessions`) in µs, by process, while the load ran"
        " (the cores divided by the rate; `mongod` under the pipeline is the release's, idle"
        " here):",
        "",
        "| load | conns | run | " + " | ".join(roles) + " | all |",
        "|---|---:|---|" + "---:|" * (len(roles) + 1),
    ]
    for load in LOADS:
        for c in CONNECTIONS:
            for run in ("pipeline", "baseline"):
                cell = details[f"{run}_{load}_c{c}"]
                per_event = {
                    role: cores * 1e6 / max(cell["events_per_s"], 1)
                    for role, cores in cell["cores"].items()
                }
                shown = [f"{per_event[r]:,.0f}" if r in per_event else "" for r in roles]
                rows.append(
                    f"| {load} | {c} | {run} | "
                    + " | ".join(shown)
                    + f" | {sum(per_event.values()):,.0f} |"
                )
    return rows


def write_table(document: dict[str, Any]) -> None:
    text = README.read_text()
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
        README.write_text(f"{head}{TABLE_START}\n{table(document)}\n{TABLE_END}{tail}")


def million_only() -> None:
    """Run the million-session scenario alone and put its figures into results.json (the
    rest of the file as it was)."""
    document = json.loads(RESULTS.read_text())
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-bench-"))
    try:
        with LocalMongo(data_dir / "mongod") as mongo:
            bench = Bench(15, Settings(), mongo.address, data_dir)
            with bench.broker("million"):
                bench.million()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    document["results"].update(bench.results)
    document["details"]["million"] = bench.details["million"]
    document["targets_met"] = verdicts(document["results"], document["lagging"])
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    write_table(document)


def main() -> None:
    configure_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per metrics scrape
    if sys.argv[1:] == ["table"]:
        write_table(json.loads(RESULTS.read_text()))
        return
    if sys.argv[1:] == ["million"]:
        million_only()
        return
    seconds = float(os.environ.get("BENCH_SECONDS", "15"))
    release_sessions = int(os.environ.get("BENCH_RELEASE_SESSIONS", "100000"))
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-bench-"))
    external = Settings()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as servers:
            mongodb_uri, mongod_pid = external.mongodb_url, None
            if not mongodb_uri:
                mongo = servers.enter_context(LocalMongo(data_dir / "mongod"))
                mongodb_uri, mongod_pid = mongo.address, mongo.pid
            bench = Bench(seconds, external, mongodb_uri, data_dir)
            bench.mongod_pid = mongod_pid
            bench.idle()
            bench.http_loads()
            with bench.broker("stream"):
                bench.stream_scenarios(release_sessions)
            if os.environ.get("BENCH_MILLION", "1") != "0":
                with bench.broker("million"):
                    bench.million()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    document = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "parameters": {
            "seconds": seconds,
            "gateway_processes": bench.processes,
            "load_generator": bench.generator.kind,
            "pool_sessions": bench.pool,
            "release_sessions": release_sessions,
            "catch_up_target_s": CATCH_UP_TARGET_S,
            "run_seconds": round(time.monotonic() - started),
        },
        "results": bench.results,
        "lagging": bench.lagging,
        "targets_met": verdicts(bench.results, bench.lagging),
        "load_cpu_cores_max": max(
            d.get("load_cpu_cores", 0) for d in bench.details.values() if isinstance(d, dict)
        ),
        "details": bench.details,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    write_table(document)
    sys.stdout.write(table(document) + "\n")


if __name__ == "__main__":
    main()

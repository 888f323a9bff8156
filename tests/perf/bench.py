"""``make bench``: every scenario of the benchmark in one run, on servers of its own.

Starts a local broker and mongod (or uses ``CLICKSTREAM_KAFKA_BOOTSTRAP`` and
``CLICKSTREAM_MONGODB_URI``), runs each scenario with the load generator
(``tests/perf/load.py``) in a process of its own, prints a table, and writes
``tests/perf/results.json`` and the table in the README's performance section.

``BENCH_SECONDS`` (default 10) is the length of each measured scenario;
``BENCH_RELEASE_SESSIONS`` (default 100,000, or 20,000 when ``BENCH_SECONDS`` < 10) the
sessions of 5 events each released at once; ``BENCH_GATEWAY_PROCESSES`` (default 2) the
gateway's processes (``CLICKSTREAM_HTTP_WORKERS``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
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
from confluent_kafka import Consumer, TopicPartition

from clickstream.log import configure_logging
from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from deploy.local_servers import (
    LOOPBACK,
    LocalGateway,
    LocalHttpProcess,
    LocalKafka,
    LocalMongo,
    LocalServer,
    LocalWorker,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("results.json")
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- bench:start -->", "<!-- bench:end -->"
EVENTS_PER_BATCH = 100
BENCH_TOKEN = uuid.uuid4().hex
E2E_EVENTS_PER_S = 2000


class BaselineServer(LocalHttpProcess):
    """The replaced design (``tests/perf/baseline_app.py``) under uvicorn."""

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
            "--workers",
            os.environ.get("BENCH_GATEWAY_PROCESSES", "2"),
            "--no-access-log",
        ]


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """One load, by the generator in a process of its own."""
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its children (uvicorn's workers)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Bench:
    def __init__(
        self, seconds: float, external_bootstrap: str | None, mongodb_uri: str, data_dir: Path
    ) -> None:
        self.seconds = seconds
        self.external_bootstrap = external_bootstrap
        self.bootstrap = external_bootstrap or ""
        self.mongodb_uri = mongodb_uri
        self.data_dir = data_dir
        self.processes = int(os.environ.get("BENCH_GATEWAY_PROCESSES", "2"))
        self.results: dict[str, Any] = {}
        self.details: dict[str, Any] = {}

    # -- set-up -------------------------------------------------------------------------

    @contextlib.contextmanager
    def broker(self, name: str) -> Iterator[None]:
        """A local broker of the scenario's own, its data deleted after: the local broker
        keeps all its data in one snapshot, and gigabytes left by one scenario would slow
        the next. An external broker (CLICKSTREAM_KAFKA_BOOTSTRAP) is used as it is."""
        if self.external_bootstrap:
            yield
            return
        kafka = LocalKafka(self.data_dir / f"kafka-{name}").start()
        self.bootstrap = kafka.address
        try:
            yield
        finally:
            kafka.stop()
            shutil.rmtree(kafka.data_dir, ignore_errors=True)

    def settings(self, prefix: str, **overrides: Any) -> Settings:
        return Settings(
            kafka_bootstrap=self.bootstrap,
            mongodb_uri=self.mongodb_uri,
            topic_prefix=prefix,
            mongodb_database=prefix.strip(".").replace(".", "_"),
            internal_tokens=[BENCH_TOKEN],
            control_secret=[uuid.uuid4().hex],
            **overrides,
        )

    def fresh(self, name: str) -> Settings:
        """Settings on topics and a database of their own, the topics created."""
        settings = self.settings(f"bench-{name}-{uuid.uuid4().hex[:6]}.")
        ensure_topics(settings)
        return settings

    def env(self, settings: Settings, **extra: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        return {**inherited, **settings.environment(), "CLICKSTREAM_LOG_LEVEL": "WARNING", **extra}

    def gateway(self, settings: Settings, worker: LocalWorker | None = None) -> LocalGateway:
        extra = {"CLICKSTREAM_HTTP_WORKERS": str(self.processes)}
        if worker is not None:
            extra["CLICKSTREAM_WORKER_URLS"] = worker.address
        directory = self.data_dir / f"gateway-{settings.topic_prefix}"
        return LocalGateway(directory, env=self.env(settings, **extra)).start()

    def worker(self, settings: Settings) -> LocalWorker:
        directory = self.data_dir / f"worker-{settings.topic_prefix}"
        env = self.env(settings, CLICKSTREAM_WORKER_ID=f"bench-{uuid.uuid4().hex[:6]}")
        env["CLICKSTREAM_DATA_DIR"] = str(directory)
        return LocalWorker(directory, env=env).start(timeout=120)

    # -- scenarios ----------------------------------------------------------------------

    def raw_produce(self, settings: Settings) -> None:
        result = run_load(
            {
                "scenario": "raw_produce",
                "events_per_request": EVENTS_PER_BATCH,
                "bootstrap": self.bootstrap,
                "topic_prefix": settings.topic_prefix,
                "seconds": self.seconds,
            }
        )
        self.results["raw_produce_events_per_s"] = round(result["events_per_s"])
        self.details["raw_produce"] = result

    def http_loads(self, server: LocalServer, prefix: str) -> dict[str, Any]:
        """The most 100-event and 1-event requests the server sustains, and 1-event
        latency at half of that rate."""
        address = {"host": LOOPBACK, "port": server.port, "seconds": self.seconds}
        out: dict[str, Any] = {}
        for name, per_request, connections in (("batch", EVENTS_PER_BATCH, 8), ("single", 1, 64)):
            cpu_before = cpu_seconds(server.pid or 0)
            result = run_load(
                {
                    "scenario": "closed_loop",
                    "events_per_request": per_request,
                    "connections": connections,
                    **address,
                }
            )
            result["server_cpu_cores"] = (cpu_seconds(server.pid or 0) - cpu_before) / result[
                "seconds"
            ]
            out[name] = result
            self.details[f"{prefix}_{name}"] = result
        if prefix == "gateway":
            half = out["single"]["requests_per_s"] / 2
            result = run_load(
                {"scenario": "open_loop", "events_per_request": 1, "rate": half, **address}
            )
            out["half"] = result
            self.details["gateway_single_half_load"] = result
        return out

    def gateway_scenarios(self, settings: Settings) -> None:
        gateway = self.gateway(settings)
        try:
            loads = self.http_loads(gateway, "gateway")
        finally:
            gateway.stop()
        self.results["gateway_batch_events_per_s"] = round(loads["batch"]["events_per_s"])
        self.results["gateway_single_requests_per_s"] = round(loads["single"]["requests_per_s"])
        self.results["gateway_single_p99_ms_at_half_load"] = round(loads["half"]["p99_ms"], 2)
        floor = run_load(
            {
                "scenario": "raw_latency",
                "bootstrap": self.bootstrap,
                "topic_prefix": settings.topic_prefix,
                "rate": loads["half"]["offered_per_s"],
                "seconds": self.seconds,
            }
        )
        self.results["raw_produce_p99_ms_at_half_load"] = round(floor["p99_ms"], 2)
        self.details["raw_produce_at_half_load"] = floor

    def baseline_scenarios(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")},
            "BASELINE_MONGODB_URI": self.mongodb_uri,
            "BASELINE_MONGODB_DATABASE": f"baseline_{uuid.uuid4().hex[:6]}",
            "BENCH_GATEWAY_PROCESSES": str(self.processes),
        }
        server = BaselineServer(self.data_dir / "baseline", env=env).start()
        try:
            loads = self.http_loads(server, "baseline")
        finally:
            server.stop()
        self.results["baseline_batch_events_per_s"] = round(loads["batch"]["events_per_s"])
        self.results["baseline_single_requests_per_s"] = round(loads["single"]["requests_per_s"])

    def stream_scenarios(self, settings: Settings, release_sessions: int) -> None:
        worker = self.worker(settings)
        gateway = self.gateway(settings, worker)
        try:
            self._end_to_end(gateway)
            self._stream_and_release(settings, worker, gateway, release_sessions)
        finally:
            gateway.stop()
            worker.stop()

    def _end_to_end(self, gateway: LocalGateway) -> None:
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

    def _stream_and_release(
        self, settings: Settings, worker: LocalWorker, gateway: LocalGateway, sessions: int
    ) -> None:
        events_each = 5
        pid = worker.pid or 0
        rss_before = rss_mb(pid)
        changelog = f"{settings.topic_prefix}stream-sessions-changelog"
        # Each session is a registration and one SessionEvents message: two table writes.
        target = self._changelog_messages(changelog) + sessions * 2
        publish: dict[str, Any] = {}
        cpu_before = cpu_seconds(pid)
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
        while self._changelog_messages(changelog) < target:
            if time.perf_counter() > deadline:
                raise TimeoutError("the worker did not join every message within 30 minutes")
            time.sleep(0.2)
        joined_in = time.perf_counter() - started
        publisher.join()
        worker_cpu = (cpu_seconds(pid) - cpu_before) / joined_in
        rss_after = rss_mb(pid)
        self.results["stream_events_per_s"] = round(sessions * events_each / joined_in)
        self.results["worker_rss_mb_per_100k_sessions"] = round(
            (rss_after - rss_before) * 100_000 / sessions, 1
        )
        self.details["stream"] = {
            "sessions": sessions,
            "events": sessions * events_each,
            "messages_per_s": sessions * 2 / joined_in,
            "seconds": joined_in,
            "worker_cpu_cores": worker_cpu,
            "publish": publish,
            "worker_rss_mb_before": rss_before,
            "worker_rss_mb_after": rss_after,
        }

        started = time.perf_counter()
        answer = httpx.post(
            f"{gateway.address}/api/v1/clickstream/internal/batch/release",
            json={"release_id": uuid.uuid4().hex},
            headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
            timeout=1800,
        ).json()
        batch_id = answer["batch_id"]
        while answer["status"] != "released":
            time.sleep(0.1)
            answer = httpx.get(
                f"{gateway.address}/api/v1/clickstream/internal/batch",
                params={"batch_id": batch_id},
                headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
                timeout=30,
            ).json()
        released_in = time.perf_counter() - started
        if answer["session_count"] < sessions:
            raise RuntimeError(f"released {answer['session_count']} of {sessions} sessions")
        self.results["release_sessions"] = answer["session_count"]
        self.results["release_sessions_per_s"] = round(answer["session_count"] / released_in)
        self.details["release"] = {"seconds": released_in, **answer}

    def _changelog_messages(self, topic: str) -> int:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-watch"})
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return 0
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions
            )
        finally:
            consumer.close()


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


TARGETS = [
    ("raw_produce_events_per_s", None, "the limit"),
    ("gateway_batch_events_per_s", ">= 30,000 and >= raw/4", None),
    ("gateway_single_requests_per_s", ">= 3,000", None),
    ("gateway_single_p99_ms_at_half_load", "< 25", None),
    ("raw_produce_p99_ms_at_half_load", None, "the broker's floor: a bare producer, same rate"),
    ("baseline_batch_events_per_s", "gateway >= 5x", None),
    ("baseline_single_requests_per_s", "gateway >= 2x", None),
    ("stream_events_per_s", ">= 10,000", None),
    ("e2e_p99_ms", "< 2,000", None),
    ("e2e_offered_events_per_s", None, "offered load of e2e"),
    ("release_sessions_per_s", ">= 5,000", None),
    ("release_sessions", None, "sessions of 5 events released"),
    ("worker_rss_mb_per_100k_sessions", None, "resident memory"),
]


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "gateway_batch_events_per_s": r["gateway_batch_events_per_s"] >= 30_000
        and r["gateway_batch_events_per_s"] >= r["raw_produce_events_per_s"] / 4,
        "gateway_single_requests_per_s": r["gateway_single_requests_per_s"] >= 3_000,
        "gateway_single_p99_ms_at_half_load": r["gateway_single_p99_ms_at_half_load"] < 25,
        "baseline_batch_events_per_s": r["gateway_batch_events_per_s"]
        >= 5 * r["baseline_batch_events_per_s"],
        "baseline_single_requests_per_s": r["gateway_single_requests_per_s"]
        >= 2 * r["baseline_single_requests_per_s"],
        "stream_events_per_s": r["stream_events_per_s"] >= 10_000,
        "e2e_p99_ms": r["e2e_p99_ms"] < 2_000,
        "release_sessions_per_s": r["release_sessions_per_s"] >= 5_000,
    }


def table(document: dict[str, Any]) -> str:
    results, met = document["results"], document["targets_met"]
    rows = ["| figure | value | target | met |", "|---|---:|---|---|"]
    for key, target, note in TARGETS:
        verdict = "" if key not in met else ("yes" if met[key] else "**no**")
        rows.append(f"| `{key}` | {results[key]:,} | {target or note} | {verdict} |")
    m, p = document["machine"], document["parameters"]
    rows.append("")
    rows.append(
        f"Measured {document['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}; BENCH_SECONDS={p['seconds']:g}, "
        f"{p['gateway_processes']} gateway processes (and as many baseline processes), "
        f"load generator CPU up to {document['load_cpu_cores_max']:.2f} cores."
    )
    return "\n".join(rows)


def write(document: dict[str, Any]) -> None:
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    text = README.read_text()
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
        README.write_text(f"{head}{TABLE_START}\n{table(document)}\n{TABLE_END}{tail}")


def main() -> None:
    configure_logging("INFO")
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    default_sessions = 100_000 if seconds >= 10 else 20_000
    release_sessions = int(os.environ.get("BENCH_RELEASE_SESSIONS", str(default_sessions)))
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-bench-"))
    external = Settings()
    try:
        with contextlib.ExitStack() as servers:
            mongodb_uri = external.mongodb_url
            if not mongodb_uri:
                mongodb_uri = servers.enter_context(LocalMongo(data_dir / "mongod")).address
            bench = Bench(seconds, external.kafka_bootstrap, mongodb_uri, data_dir)
            with bench.broker("raw"):
                bench.raw_produce(bench.fresh("raw"))
            with bench.broker("gateway"):
                bench.gateway_scenarios(bench.fresh("gateway"))
            bench.baseline_scenarios()
            with bench.broker("stream"):
                bench.stream_scenarios(bench.fresh("stream"), release_sessions)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    document = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "parameters": {
            "seconds": seconds,
            "gateway_processes": bench.processes,
            "events_per_batch_request": EVENTS_PER_BATCH,
            "release_sessions": release_sessions,
        },
        "results": bench.results,
        "targets_met": verdicts(bench.results),
        "load_cpu_cores_max": max(
            d.get("load_cpu_cores", 0) for d in bench.details.values() if isinstance(d, dict)
        ),
        "details": bench.details,
    }
    write(document)
    sys.stdout.write(table(document) + "\n")


if __name__ == "__main__":
    main()

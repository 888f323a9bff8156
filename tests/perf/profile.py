"""``make profile``: where the time goes in one bench cell, process by process.

``python -m tests.perf.profile LOAD CONNECTIONS`` starts a fresh ``clickstream run`` exactly
as ``make bench`` does for the cell ``pipeline_<LOAD>_c<CONNECTIONS>``, loads it with wrk
for ``BENCH_SECONDS`` and meanwhile

- reads the CPU time of every process of the run (gateway, worker, local broker, mongod)
  and of the load generator from ``/proc``: which process holds the two cores;
- samples the Python processes (gateway and worker) with py-spy (``PROFILE_RATE`` samples
  a second of the thread holding the GIL, without pausing the process): in which
  functions their interpreter time goes.

``python -m tests.perf.profile e2e|stream|release`` profiles one of the bench's worker
scenarios instead (a worker and a gateway on a broker of their own; ``stream`` and
``release`` with ``BENCH_RELEASE_SESSIONS`` sessions, 50,000 by default).
``PROFILE_CLICKSTREAM_<NAME>=value`` sets ``CLICKSTREAM_<NAME>`` for every process started,
to compare settings. ``PROFILE_PY_SPY`` replaces py-spy's sampling options.
``PROFILE_PAUSE_WORKER=1`` stops the worker (SIGSTOP) while the load runs, to see the
gateway's figures without it. ``python -m tests.perf.profile broker`` measures the local
broker alone: a bare producer at the gateway's message sizes and rates of the c4 cells,
open loop.

Writes ``tests/perf/profiles/<cell>.json`` (cores per process; per Python process the
functions with the most samples, by their own time and with what they call) and prints a
summary. py-spy needs ptrace: run as root or with ``kernel.yama.ptrace_scope`` 0.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from clickstream.log import configure_logging
from clickstream.settings import Settings
from deploy.local.servers import LocalKafka, LocalMongo
from tests.perf.bench import LOADS, Bench
from tests.perf.processes import CpuShares, run_roles

logger = logging.getLogger("profile")

PROFILES = Path(__file__).with_name("profiles")
# py-spy's raw stacks (for speedscope or flamegraph.pl), kept out of the tree.
RAW = Path(tempfile.gettempdir()) / "clickstream-profiles"
TOP = 25


def is_python(pid: int) -> bool:
    try:
        return "python" in Path(f"/proc/{pid}/exe").resolve().name
    except OSError:
        return False


def summarize(raw: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: the functions with most samples, by own time and
    with callees. Frames are ``function (file:line)``; the line is dropped to merge a
    function's samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_function(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "packages": [(name, round(100 * n / total, 1)) for name, n in packages.most_common()],
        "own": [(name, round(100 * n / total, 1)) for name, n in own.most_common(TOP)],
        "inclusive": [
            (name, round(100 * n / total, 1)) for name, n in inclusive.most_common(TOP * 2)
        ],
    }


_OURS = ("batches", "clickstream", "consumers", "deploy", "producers", "schemas", "stream_app")


def _package(function: str) -> str:
    """The top-level package of a function as ``_function`` names it (ours marked so)."""
    path = function.rsplit(" (", 1)[-1].rstrip(")")
    top = path.split("/", 1)[0] if "/" in path else "(python)"
    if top.startswith("<") or top.endswith(".py"):
        top = "(python)"
    return f"{top} (ours)" if top in _OURS else top


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.removeprefix(str(Path(__file__).resolve().parents[2]) + "/")
    return f"{name} ({path})"


class Sampling:
    """While open: py-spy on each Python process of ``roles`` (stopped by SIGINT, which
    makes it write what it has) and their CPU time from ``/proc``."""

    def __init__(self, roles: dict[int, str], rate: int, out_dir: Path) -> None:
        self.roles, self.rate, self.out_dir = roles, rate, out_dir
        self.spies: dict[int, tuple[Path, subprocess.Popen[bytes]]] = {}
        self.cpu = CpuShares(roles)
        self.python: dict[str, Any] = {}

    def __enter__(self) -> Sampling:
        for pid, name in self.roles.items():
            if not is_python(pid):
                continue
            output = self.out_dir / f"{name}.txt"
            command = [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(output),
                # Where the interpreter's time goes, without stopping the process for each
                # sample (that halved the rates measured). PROFILE_PY_SPY replaces these,
                # e.g. "--idle --threads --nonblocking" for where the threads wait.
                *os.environ.get("PROFILE_PY_SPY", "--gil --nonblocking").split(),
            ]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.spies[pid] = (output, spy)
        self.cpu.__enter__()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu.__exit__()
        self.seconds = round(time.monotonic() - self.started, 1)
        for pid, (output, spy) in self.spies.items():
            spy.send_signal(signal.SIGINT)
            _, errors = spy.communicate(timeout=120)
            if output.exists():
                self.python[self.roles[pid]] = summarize(output)
            else:
                logger.warning("py-spy wrote nothing pid=%s: %s", pid, errors.decode()[-500:])

    def document(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "cores": self.cpu.cores, "python": self.python}


def raw_dir(cell: str) -> Path:
    directory = RAW / cell
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def profile_cell(
    bench: Bench, load: str, connections: int, rate: int, pause_worker: bool = False
) -> dict[str, Any]:
    """One bench cell: ``clickstream run`` under wrk. With ``pause_worker`` the worker is
    stopped (SIGSTOP) while the load runs: what the gateway's figures are without it."""
    cell = f"pipeline_{load}_c{connections}" + ("_worker_paused" if pause_worker else "")
    with bench.pipeline(cell, load) as (run, metrics, prefix):
        roles = run_roles(run.pid or 0)
        worker = next(pid for pid, role in roles.items() if role == "worker")
        if pause_worker:
            os.kill(worker, signal.SIGSTOP)
        try:
            with Sampling(roles, rate, raw_dir(cell)) as sampling:
                result = bench.generator.run(
                    run.port, load, connections, bench.seconds, prefix, bench.pool
                )
        finally:
            if pause_worker:
                os.kill(worker, signal.SIGCONT)
        catch_up = metrics.caught_up(time.monotonic(), bench.catch_up_timeout)
    sampling.cpu.cores["load generator"] = round(result["load_cpu_cores"], 3)
    return {
        "cell": cell,
        "events_per_s": round(result["events_per_s"]),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 1),
        "catch_up_s": catch_up,
        **sampling.document(),
    }


def profile_standalone(bench: Bench, scenario: str, sessions: int, rate: int) -> dict[str, Any]:
    """The bench's worker scenarios on a broker of their own: ``e2e`` (2,000 events/s
    through the gateway, GET session until they show), ``stream`` (sessions of 5 events
    straight to Kafka) or ``release`` (of sessions streamed first, not profiled)."""
    with bench.broker("stream") as kafka, bench.standalone() as (settings, worker, gateway):
        roles = {worker.pid or 0: "worker", gateway.pid or 0: "gateway"}
        if kafka is not None:
            roles[kafka.pid or 0] = "broker"
        if scenario == "release":
            bench.stream(settings, worker, sessions)
            if bench.mongod_pid is not None:
                roles[bench.mongod_pid] = "mongod"
        with Sampling(roles, rate, raw_dir(scenario)) as sampling:
            if scenario == "e2e":
                bench.end_to_end(gateway)
            elif scenario == "stream":
                bench.stream(settings, worker, sessions)
            else:
                bench.release(gateway, worker, sessions)
    figures = {
        "e2e": {"e2e_p99_ms": bench.results.get("e2e_p99_ms")},
        "stream": {"events_per_s": bench.results.get("stream_events_per_s")},
        "release": {"sessions_per_s": bench.results.get("release_sessions_per_s")},
    }[scenario]
    return {"cell": scenario, **figures, **sampling.document()}


# (bytes per message, messages per second): about what the gateway sends in the c4 cells
# of the single and batch100 loads.
BARE_PRODUCER_LOADS = ((300, 1500), (8500, 530))


def profile_broker(seconds: float, data_dir: Path) -> dict[str, Any]:
    """The local broker alone: a bare producer with the gateway's settings, at a fixed rate
    (open loop), on a fresh broker per load, nothing else running. Each message's time from
    produce to acknowledgement: the tail the broker brings by itself."""
    loads = {}
    for size, rate in BARE_PRODUCER_LOADS:
        with LocalKafka(data_dir / f"kafka-{size}") as kafka:
            admin = AdminClient({"bootstrap.servers": kafka.address})
            admin.create_topics([NewTopic("bare", 6, 1)])["bare"].result()
            producer = Producer(Settings(kafka_bootstrap=kafka.address).kafka_producer_config())
            # An idempotent producer's first messages wait about a second for its producer
            # id: warmed up first, as the gateway's producer is before any request comes.
            producer.produce("bare", b"warm-up")
            producer.flush(30)
            with CpuShares({kafka.pid or 0: "broker"}) as cpu:
                latencies = _produce_at(producer, size, rate, seconds)
        latencies.sort()
        loads[f"{size}B_at_{rate}_per_s"] = {
            "messages": len(latencies),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1),
            "broker_cores": cpu.cores["broker"],
        }
    return {"cell": "broker", "loads": loads, "cores": {}, "python": {}}


def _produce_at(producer: Producer, size: int, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    payload = b"x" * size
    started, sent = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        due = started + sent / rate
        while time.perf_counter() < due:
            producer.poll(0.0005)
        at = time.perf_counter()
        producer.produce(
            "bare",
            payload,
            str(sent).encode(),
            on_delivery=lambda _err, _msg, at=at: latencies.append(time.perf_counter() - at),
        )
        sent += 1
    producer.flush(60)
    return latencies


def report(document: dict[str, Any]) -> str:
    figures = {k: v for k, v in document.items() if k not in ("cell", "cores", "python")}
    lines = [
        f"{document['cell']}: " + ", ".join(f"{k} {v}" for k, v in figures.items()),
        "cores: " + ", ".join(f"{k} {v}" for k, v in document["cores"].items()),
    ]
    for name, figures in document["python"].items():
        lines.append(f"\n{name} ({figures['samples']} samples), own time:")
        lines += [f"  {share:5.1f}%  {function}" for function, share in figures["own"][:15]]
    return "\n".join(lines)


def main() -> None:
    configure_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    arguments = sys.argv[1:]
    standalone = arguments in (["e2e"], ["stream"], ["release"])
    broker = arguments == ["broker"]
    if not (broker or standalone or (len(arguments) == 2 and arguments[0] in LOADS)):
        sys.exit(
            f"usage: python -m tests.perf.profile {{{'|'.join(LOADS)}}} CONNECTIONS"
            " | e2e | stream | release | broker"
        )
    seconds = float(os.environ.get("BENCH_SECONDS", "15"))
    rate = int(os.environ.get("PROFILE_RATE", "50"))
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-profile-"))
    try:
        if broker:
            document = profile_broker(seconds, data_dir)
        else:
            with LocalMongo(data_dir / "mongod") as mongo:
                document = _profile_pipeline(arguments, seconds, rate, mongo, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    PROFILES.mkdir(exist_ok=True)
    (PROFILES / f"{document['cell']}.json").write_text(json.dumps(document, indent=2) + "\n")
    sys.stdout.write(report(document) + "\n")


def _profile_pipeline(
    arguments: list[str], seconds: float, rate: int, mongo: LocalMongo, data_dir: Path
) -> dict[str, Any]:
    bench = Bench(seconds, Settings(), mongo.address, data_dir)
    bench.mongod_pid = mongo.pid
    bench.extra_env = {
        name.removeprefix("PROFILE_"): value
        for name, value in os.environ.items()
        if name.startswith("PROFILE_CLICKSTREAM_")
    }
    if len(arguments) == 1:
        sessions = int(os.environ.get("BENCH_RELEASE_SESSIONS", "50000"))
        return profile_standalone(bench, arguments[0], sessions, rate)
    pause = os.environ.get("PROFILE_PAUSE_WORKER") == "1"
    return profile_cell(bench, arguments[0], int(arguments[1]), rate, pause)


if __name__ == "__main__":
    main()

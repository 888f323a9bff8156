"""``make soak``: the pipeline at half its measured capacity for a long while, with a
worker SIGKILLed and the broker restarted every few minutes, then exact accounting.

Starts its own local broker, mongod, worker and gateway (as ``clickstream run`` does),
measures the gateway's capacity for ``SOAK_CALIBRATE_SECONDS`` with the worker running,
then offers half of it from concurrent clients that retry 503s and connection errors as
real ones do. Every ``SOAK_FAULT_SECONDS`` it alternately kills the worker (SIGKILL; it
comes back with its identity) and restarts the broker (a clean stop: SIGKILL would lose what
it acknowledged); every ``SOAK_RELEASE_SECONDS`` it releases a batch. Sessions are retired
``SOAK_RETENTION_SECONDS`` after their release, so the worker's memory should stay flat.

At the end: a last release, then every event answered 2xx must be in exactly one batch as a
new event. Figures go to ``tests/perf/soak.json`` and the README's soak section. Never
run by ``make test``: it takes ``SOAK_SECONDS`` (default 1800) and more.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from clickstream.credentials import internal_auth_headers
from clickstream.log import configure_logging
from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from deploy.local.run import LOCAL_SOURCE_PURGE_SECONDS
from deploy.local.servers import LocalGateway, LocalKafka, LocalMongo, LocalWorker, free_port
from tests.perf.bench import machine, rss_mb
from tests.utils.clients import Clients, assert_exactly_once, released_batches
from tests.utils.payloads import new_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.utils.clients import Acknowledged

logger = logging.getLogger("soak")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("soak.json")
README = ROOT / "README.md"
START, END = "<!-- soak:start -->", "<!-- soak:end -->"
RELEASE_PATH = "/api/v1/clickstream/internal/batch/release"
CLIENTS = 8
# Per client, far beyond what one gets through in SOAK_FULL_SPEED_SECONDS.
FULL_SPEED_SESSIONS = 10_000_000
SOAK_TOKEN = secrets.token_hex(16)


def _seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class Soak:
    def __init__(self, data_dir: Path) -> None:
        self.seconds = _seconds("SOAK_SECONDS", 1800)
        self.fault_every = _seconds("SOAK_FAULT_SECONDS", 180)
        self.release_every = _seconds("SOAK_RELEASE_SECONDS", 60)
        self.retention = _seconds("SOAK_RETENTION_SECONDS", 120)
        # The first and the last this many seconds run at full speed, no fault: the rate they
        # hold, compared, tells whether a long run slows down.
        self.full_speed = _seconds("SOAK_FULL_SPEED_SECONDS", min(300, self.seconds / 6))
        self.data_dir = data_dir
        self.kafka = LocalKafka(data_dir / "kafka", free_port())
        self.mongo = LocalMongo(data_dir / "mongodb")
        self.faults: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.releases: list[dict[str, Any]] = []
        # What went wrong besides the faults: a release refused.
        self.errors: list[dict[str, Any]] = []
        # The worker exiting by itself (its watchdog stops it when a librdkafka call hangs
        # past its timeout, for a supervisor to start it again).
        self.worker_exits: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}

    def env(self, settings: Settings, **extra: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        return {**inherited, **settings.environment(), "CLICKSTREAM_LOG_LEVEL": "INFO", **extra}

    def run(self) -> dict[str, Any]:
        self.kafka.start()
        self.mongo.start()
        try:
            return self._run()
        finally:
            self.mongo.stop()
            self.kafka.stop()

    def _run(self) -> dict[str, Any]:
        settings = Settings(
            kafka_bootstrap=self.kafka.address,
            mongodb_uri=self.mongo.address,
            topic_prefix="soak.",
            data_dir=self.data_dir,
            session_retention_seconds=self.retention,
            tick_interval_seconds=10,
            release_wait_seconds=5,
            # As `clickstream run` on its local broker.
            worker_source_purge_seconds=LOCAL_SOURCE_PURGE_SECONDS,
            internal_tokens=[SOAK_TOKEN],
            control_secret=[secrets.token_hex(16)],
        )
        self.headers = internal_auth_headers(settings)
        ensure_topics(settings)
        worker = LocalWorker(
            self.data_dir / "worker",
            free_port(),
            env=self.env(settings, CLICKSTREAM_WORKER_ID="soak-worker"),
        )
        worker.start(timeout=120)
        gateway = LocalGateway(
            self.data_dir / "gateway",
            free_port(),
            env=self.env(settings, CLICKSTREAM_WORKER_URLS=worker.address),
        ).start()
        try:
            return self._load(settings, worker, gateway)
        finally:
            gateway.stop()
            worker.stop()

    def _load(
        self, settings: Settings, worker: LocalWorker, gateway: LocalGateway
    ) -> dict[str, Any]:
        first, first_rate = self._full_speed(gateway)
        capacity = first_rate
        offered = capacity / 2
        logger.info("capacity requests_per_s=%.0f offered=%.0f", capacity, offered)
        clients = Clients(
            gateway.address,
            count=CLIENTS,
            requests_per_second=offered,
            give_up_seconds=300,
            # Bounded by the offered rate and SOAK_SECONDS, not by a count of sessions.
            max_sessions=1_000_000,
        )
        started = time.monotonic()
        half_speed = self.seconds - 2 * self.full_speed
        next_fault, next_release, next_sample = (
            started + self.fault_every,
            started + self.release_every,
            started,
        )
        fault_number = 0
        with clients:
            while (now := time.monotonic()) < started + half_speed:
                self._restart_if_exited(worker, now - started)
                if now >= next_sample:
                    self._sample(now - started, worker, clients)
                    next_sample += 10
                if now >= next_release:
                    self._release_in_background(gateway.address, now - started)
                    next_release += self.release_every
                if now >= next_fault:
                    fault = self._worker_kill if fault_number % 2 == 0 else self._broker_restart
                    self._fault(fault, worker, now - started)
                    fault_number += 1
                    next_fault += self.fault_every
                time.sleep(0.5)
        acknowledged = clients.stop()
        last_full, last_rate = self._full_speed(gateway)
        for thread in threading.enumerate():
            if thread.name == "soak-release":
                thread.join()
        at = time.monotonic() - started
        self._restart_if_exited(worker, at)
        last = self._release(gateway.address, at, wait=True, worker=worker)
        self._wait_released(settings, worker, at)
        batches = released_batches(settings)
        outcome = "every acknowledged event in exactly one batch"
        try:
            for part in (first, acknowledged, last_full):
                counted = assert_exactly_once(part, batches.values())  # all of them counted
        except AssertionError as exc:
            outcome, counted = f"FAILED: {exc}", Counter()
        self._sample(time.monotonic() - started, worker, clients)
        return {
            "results": {
                "soak_seconds": self.seconds,
                "capacity_requests_per_s": round(capacity, 1),
                "offered_requests_per_s": round(offered, 1),
                "full_speed_requests_per_s_first": round(first_rate, 1),
                "full_speed_requests_per_s_last": round(last_rate, 1),
                "acknowledged_events": acknowledged.event_count()
                + first.event_count()
                + last_full.event_count(),
                "released_new_events": len(counted),
                "client_retries": acknowledged.retries,
                "batches": len(batches),
                "faults": len(self.faults),
                "accounting": outcome,
                "errors": len(self.errors),
                "worker_exits": len(self.worker_exits),
                "worker_rss_mb_first_5_min_max": _max_rss(self.samples, 0, 300),
                "worker_rss_mb_last_5_min_max": _max_rss(self.samples, self.seconds - 300, 1e9),
                # How long each worker restart took to be ready (its tables recovered), in
                # order: flat if recovery reads the live state, not the whole history.
                "worker_restart_s": [
                    round(fault["took_s"], 1)
                    for fault in self.faults
                    if fault["fault"].startswith("worker SIGKILL")
                ],
            },
            "last_release": last,
            "errors": self.errors,
            "worker_exits": self.worker_exits,
            "faults": self.faults,
            "releases": self.releases,
            "samples": self.samples,
        }

    def _full_speed(self, gateway: LocalGateway) -> tuple[Acknowledged, float]:
        """``SOAK_FULL_SPEED_SECONDS`` of load as fast as the clients go: what was
        acknowledged, and the requests per second it held."""
        # Bounded by the time alone: a bound on sessions would cap the rate it measures.
        with Clients(
            gateway.address, count=CLIENTS, give_up_seconds=300, max_sessions=FULL_SPEED_SESSIONS
        ) as clients:
            time.sleep(self.full_speed)
            rate = clients.acknowledged.requests / self.full_speed
        logger.info("full speed requests_per_s=%.0f", rate)
        return clients.stop(), rate

    def _restart_if_exited(self, worker: LocalWorker, at: float) -> None:
        """A worker that exited by itself is started again, as Kubernetes or `clickstream
        run` would; the exit is reported (nothing here asked for it)."""
        code = worker.exit_code()
        if code is None:
            return
        logger.error("worker exited by itself code=%s log=%s", code, worker.log_file)
        began = time.monotonic()
        worker.start(timeout=300)
        self.worker_exits.append(
            {"at_s": round(at, 1), "code": code, "restart_s": round(time.monotonic() - began, 1)}
        )

    def _sample(self, at: float, worker: LocalWorker, clients: Clients) -> None:
        pid = worker.pid
        try:
            rss = rss_mb(pid) if pid else None
        except RuntimeError:  # exited (a zombie until reaped): counted by _restart_if_exited
            rss = None
        sample = {
            "at_s": round(at, 1),
            "worker_rss_mb": round(rss, 1) if rss else None,
            "acknowledged_events": clients.acknowledged.event_count(),
            "client_retries": clients.acknowledged.retries,
        }
        self.samples.append(sample)
        logger.info("sample %s", sample)

    def _fault(self, fault: Callable[[LocalWorker], str], worker: LocalWorker, at: float) -> None:
        began = time.monotonic()
        name = fault(worker)
        self.faults.append(
            {"at_s": round(at, 1), "fault": name, "took_s": time.monotonic() - began}
        )
        logger.info("fault %s", self.faults[-1])

    def _worker_kill(self, worker: LocalWorker) -> str:
        worker.kill()
        worker.start(timeout=300)
        return "worker SIGKILL, restarted with its identity"

    def _broker_restart(self, worker: LocalWorker) -> str:
        self.kafka.stop()
        self.kafka.start()
        return "broker stopped cleanly and started again"

    def _release_in_background(self, url: str, at: float) -> None:
        threading.Thread(
            target=self._release, args=(url, at), name="soak-release", daemon=True
        ).start()

    def _release(
        self, url: str, at: float, wait: bool = False, worker: LocalWorker | None = None
    ) -> dict[str, Any]:
        """One release, retried while only Kafka or the coordinator is away; with
        ``worker``, restarted if it exited meanwhile (after the main loop, nothing else
        would: a release would wait for a worker that is gone)."""
        release_id = new_id()
        deadline = time.monotonic() + 300
        while True:
            try:
                answer = httpx.post(
                    f"{url}{RELEASE_PATH}",
                    json={"release_id": release_id},
                    headers=self.headers,
                    timeout=60,
                )
            except httpx.TransportError as exc:
                logger.info("release not answered error=%r, retrying", exc)
                answer = None
            if answer is not None and answer.status_code in (200, 202, 404):
                break
            if answer is not None:
                if answer.status_code != 503:  # only Kafka or the coordinator away: retry
                    self.errors.append(
                        {"at_s": round(at, 1), "release": answer.status_code, "body": answer.text}
                    )
                    logger.error("release refused %s %s", answer.status_code, answer.text)
                    time.sleep(5)
                    continue
                logger.info("release answered 503, retrying")
            if worker is not None:
                self._restart_if_exited(worker, at)
            if time.monotonic() > deadline:
                raise RuntimeError(f"release {release_id} never accepted")
            time.sleep(1)
        record = {"at_s": round(at, 1), "status": answer.status_code, **answer.json()}
        self.releases.append(record)
        logger.info("release %s", record)
        return record

    def _wait_released(
        self, settings: Settings, worker: LocalWorker, at: float, timeout: float = 600
    ) -> None:
        from pymongo import MongoClient  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        with MongoClient(settings.mongodb_url) as client:
            batches = client[settings.mongodb_database].batches
            while batches.count_documents({"status": "releasing"}):
                if time.monotonic() > deadline:
                    raise RuntimeError("batches still releasing after the soak")
                self._restart_if_exited(worker, at)
                time.sleep(1)


def _max_rss(samples: list[dict[str, Any]], start: float, end: float) -> float | None:
    values = [
        s["worker_rss_mb"] for s in samples if start <= s["at_s"] <= end and s["worker_rss_mb"]
    ]
    return max(values) if values else None


def table(document: dict[str, Any]) -> str:
    rows = ["| figure | value |", "|---|---:|"]
    for name, value in document["results"].items():
        rows.append(
            f"| `{name}` | {value:,} |"
            if isinstance(value, int | float)
            else f"| `{name}` | {value} |"
        )
    m = document["machine"]
    rows.append("")
    rows.append(
        f"Measured {document['measured_at']} on {m['cores']} cores, Python {m['python']}; "
        f"SOAK_SECONDS={document['results']['soak_seconds']:g}."
    )
    return "\n".join(rows)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every server started here is stopped on the way out


def main() -> None:
    configure_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    # Kept when anything went wrong: every server's log is in it.
    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        document = Soak(directory).run()
    except BaseException:
        logger.exception("soak failed; servers' logs kept in %s", directory)
        raise
    failed = document["results"]["accounting"].startswith("FAILED") or document["errors"]
    if failed or document["worker_exits"]:
        logger.error("servers' logs kept in %s", directory)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    document["measured_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    document["machine"] = machine()
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{START}\n{table(document)}\n{END}{tail}")
    print(table(document))  # noqa: T201 - the command's output
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

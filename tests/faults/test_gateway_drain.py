"""Graceful drain: a gateway under load given SIGTERM turns /ready to 503, keeps serving
through its drain delay, answers every request it accepted (2xx or 503, never another
5xx), has everything it answered 2xx on the topics, and exits 0 within 10 s."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from deploy.local.servers import is_running
from schemas import AvroCodec, Topics
from tests.utils.clients import Clients
from tests.utils.kafka import TopicReader
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from deploy.local.servers import LocalGateway

STOP_BOUND_SECONDS = 10.0
DRAIN_SECONDS = 3.0
# About 200 events/s from 4 clients: modest, on a shared machine.
REQUESTS_PER_SECOND = 40


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (uvicorn's worker processes, if any)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def test_sigterm_under_load_drains_and_exits_within_10_s(
    settings_factory: Callable[..., Settings],
    gateway_factory: Callable[..., LocalGateway],
) -> None:
    settings = settings_factory(publish_timeout_seconds=3.0, retry_after_seconds=1)
    gateway = gateway_factory(
        settings,
        [],
        # Not read here: registering sessions and posting events need only Kafka.
        CLICKSTREAM_WORKER_URLS="http://127.0.0.1:9",
        CLICKSTREAM_DRAIN_SECONDS=str(DRAIN_SECONDS),
    )
    pid = gateway.pid
    assert pid is not None
    pids = {pid, *_descendants(pid)}

    # Clients give up on a request after 5 s of refused connections once the gateway is gone.
    clients = Clients(
        gateway.address,
        count=4,
        requests_per_second=REQUESTS_PER_SECOND,
        give_up_seconds=5.0,
    )
    with httpx.Client(base_url=gateway.address, timeout=5) as probe, clients:
        clients.wait_for_events(100, timeout=60)
        gateway_process = gateway._process  # noqa: SLF001 - the test's own child process
        assert gateway_process is not None
        gateway_process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answered_at_signal = clients.acknowledged.requests

        ready = probe.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "draining"
        # Still serving through the drain delay: requests answered 2xx after the signal.
        eventually(lambda: clients.acknowledged.requests > answered_at_signal + 10, timeout=60)

        eventually(lambda: gateway.exit_code() is not None, timeout=60, interval=0.05)
        exit_code = gateway.exit_code()
        stopped_after = time.monotonic() - signalled
        acknowledged = clients.stop()  # raises on any answer but 2xx and 503
    print(  # noqa: T201 - the measured figures
        f"drain: stopped_after={stopped_after:.2f}s requests={acknowledged.requests} "
        f"after_signal={acknowledged.requests - answered_at_signal} "
        f"retries={acknowledged.retries} events={acknowledged.event_count()}"
    )

    assert stopped_after < STOP_BOUND_SECONDS, f"stopped after {stopped_after:.1f} s"
    assert exit_code == 0, gateway.log_file.read_text()[-3000:]
    left = [p for p in pids if is_running(p)]
    assert not left, f"processes left after SIGTERM: {left}"

    topics = Topics(settings.topic_prefix)
    reader = TopicReader(settings.kafka_common_config(), AvroCodec())
    registered = {m.record["session_id"] for m in reader.read(topics.sessions)}
    published = {(e["session_id"], e["event_id"]) for _, e in reader.read_events(topics.events)}
    missing_sessions = acknowledged.sessions - registered
    missing_events = acknowledged.pairs() - published
    assert not missing_sessions, f"{len(missing_sessions)} sessions answered 2xx not on Kafka"
    assert not missing_events, f"{len(missing_events)} events answered 2xx not on Kafka"

"""The bench's Python loads, each in a process of its own, so its CPU is measured apart from
what it loads: the closed loop that stands in for wrk when wrk cannot be installed, the
end-to-end latency probe, and sessions published straight to Kafka.

``python -m tests.perf.load '<json spec>'`` runs one load and prints one JSON line with the
figures and the generator's own CPU use (user + system seconds over wall seconds).

HTTP is spoken by hand over keep-alive connections: a general-purpose client in Python
spends more CPU per request than the gateway does, and would be the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvloop
from confluent_kafka import Producer

from clickstream.settings import Settings
from producers.grouping import partition_of
from producers.ingest import IngestMessages
from producers.models import EventsIn, SessionIn
from producers.publisher import OutgoingMessage
from schemas import AvroCodec, Topics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


EVENTS_PATH = "/api/v1/clickstream/session/events"
SESSION_PATH = "/api/v1/clickstream/session"


def _id() -> str:
    return uuid.uuid4().hex


def session_json(session_id: str) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "search_query": "red running shoes",
        "search_results": [{"object_id": f"o{i}", "rank": 1.0 - i / 10} for i in range(10)],
        "search_meta": {"lang": "en"},
        "user_id": "u1",
    }


def events_json(session_id: str, count: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "events": [
            {"event_id": _id(), "object_id": f"o{i % 10}", "meta": {"position": i % 10}}
            for i in range(count)
        ],
    }


def post(path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._address = (host, port)

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host, port)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        try:
            return await self._exchange(raw)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            # The server closed this connection while it sat idle (uvicorn's keep-alive
            # timeout): reconnect and send again, as HTTP clients do. Events carry their
            # ids, so a request that did arrive is de-duplicated.
            self.close()
            self._reader, self._writer = await asyncio.open_connection(*self._address)
            return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self._writer.close()


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def count(self, status: int, latency_ms: float) -> None:
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.failed += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self.latencies_ms.append(latency_ms)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_body(spec: dict[str, Any], n: int) -> bytes:
    """The ``n``-th request of a load, with ids new in the run (as ``wrk/*.lua`` build them):
    a session registration, or events for one of the ``pool`` sessions registered before."""
    prefix = spec["prefix"]
    if spec["load"] == "sessions":
        return post(SESSION_PATH, session_json(f"{prefix}-{n}"))
    events = [
        {"event_id": f"{prefix}-{n}-{i}", "object_id": f"o{i % 10}", "meta": {"position": i % 10}}
        for i in range(spec["events_per_request"])
    ]
    return post(EVENTS_PATH, {"session_id": f"{prefix}-s{n % spec['pool']}", "events": events})


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """``connections`` clients, each sending its next request as soon as it is answered:
    the most the server sustains. The fallback when wrk is not there."""
    host, port, seconds = spec["host"], spec["port"], spec["seconds"]
    tally = Tally()
    connections = [await Connection.open(host, port) for _ in range(spec["connections"])]
    deadline = time.perf_counter() + seconds

    async def client(index: int, connection: Connection) -> None:
        n = index
        while time.perf_counter() < deadline:
            raw = request_body(spec, n)
            n += len(connections)
            started = time.perf_counter()
            status, _ = await connection.request(raw)
            tally.count(status, (time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return _summary(tally, elapsed, spec["events_per_request"])


async def paced(total: int, rate: float, send: Callable[[int, float], Awaitable[None]]) -> float:
    """Start ``send(n, due)`` for each of ``total`` requests at ``rate`` per second, whatever
    the answers, and wait for all; the seconds it took."""
    tasks = []
    started = time.perf_counter()
    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(n, due)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def end_to_end(spec: dict[str, Any]) -> dict[str, Any]:
    """Events offered at ``events_per_s`` in requests of ``events_per_request``; for a sample
    of requests, the time from the gateway's 2xx until GET session shows the events."""
    host, port, seconds = spec["host"], spec["port"], spec["seconds"]
    per_request, rate = (
        spec["events_per_request"],
        spec["events_per_s"] / spec["events_per_request"],
    )
    sample_every = spec["sample_every"]
    total = int(rate * seconds)
    setup = await Connection.open(host, port)
    background = [_id() for _ in range(50)]
    probes = [_id() for _ in range(total // sample_every + 1)]
    for session_id in background + probes:
        status, _ = await setup.request(post(SESSION_PATH, session_json(session_id)))
        assert status == 200, status
    tally = Tally()
    visible_ms: list[float] = []
    sampled = 0
    idle: list[Connection] = [await Connection.open(host, port) for _ in range(16)]

    async def send(n: int, due: float) -> None:
        nonlocal sampled
        probe = n % sample_every == 0
        session_id = probes[n // sample_every] if probe else background[n % len(background)]
        connection = idle.pop() if idle else await Connection.open(host, port)
        status, _ = await connection.request(
            post(EVENTS_PATH, events_json(session_id, per_request))
        )
        acknowledged = time.perf_counter()
        tally.count(status, (acknowledged - due) * 1000)
        if probe and status == 200:
            sampled += 1
            query = get(f"{SESSION_PATH}?session_id={session_id}&events_limit=0")
            while True:
                status, body = await connection.request(query)
                if status == 200 and json.loads(body)["event_count"] >= per_request:
                    visible_ms.append((time.perf_counter() - acknowledged) * 1000)
                    break
                waited = time.perf_counter() - acknowledged
                if waited > 30:
                    break
                # Polls spaced by 5% of the wait so far (at least 5 ms): the figure is at
                # most 5% late, and a slow answer does not bring a flood of polls (every
                # 5 ms, the polls of waiting probes became most of the load past ~1 s).
                await asyncio.sleep(max(0.005, waited * 0.05))
        idle.append(connection)

    elapsed = await paced(total, rate, send)
    return _summary(tally, elapsed, per_request) | {
        "offered_events_per_s": spec["events_per_s"],
        "samples": len(visible_ms),
        "unseen_samples": sampled - len(visible_ms),
        "e2e_p50_ms": percentile(visible_ms, 0.50),
        "e2e_p99_ms": percentile(visible_ms, 0.99),
    }


def _produce(
    producer: Producer, message: OutgoingMessage, on_delivery: Callable[..., None] | None = None
) -> None:
    """Produce, waiting for room whenever the client's queue is full."""
    extra: dict[str, Any] = {}
    if message.partition is not None:
        extra["partition"] = message.partition
    while True:
        try:
            producer.produce(
                message.topic, message.value, message.key, on_delivery=on_delivery, **extra
            )
            return
        except BufferError:
            producer.poll(0.01)


def register_sessions(bootstrap: str, topic_prefix: str, session_ids: list[str]) -> None:
    """Sessions registered straight on Kafka, as the gateway would publish them."""
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=topic_prefix)
    builder = IngestMessages(AvroCodec(), Topics(settings.topic_prefix))
    producer = Producer(settings.kafka_producer_config())
    now = time.time()
    for session_id in session_ids:
        _produce(
            producer,
            builder.session(SessionIn.model_validate(session_json(session_id)), now).message,
        )
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} session registrations not acknowledged")


def publish_sessions(spec: dict[str, Any]) -> dict[str, Any]:
    """``sessions`` sessions of ``events_each`` events, straight to Kafka (as a service using
    the producer library would), for the stream and release scenarios: a registration, then
    each event in a message of its own (the stream figure is of single-event messages)."""
    settings = Settings(kafka_bootstrap=spec["bootstrap"], topic_prefix=spec["topic_prefix"])
    builder = IngestMessages(AvroCodec(), Topics(settings.topic_prefix))
    producer = Producer(settings.kafka_producer_config())
    now = time.time()
    count = 0
    started = time.perf_counter()
    for _ in range(spec["sessions"]):
        session_id = _id()
        session = builder.session(SessionIn.model_validate(session_json(session_id)), now)
        body = events_json(session_id, spec["events_each"])
        events = [
            message
            for event in body["events"]
            for message in builder.events(
                EventsIn.model_validate({"session_id": session_id, "events": [event]}), now
            )
        ]
        for message in (session.message, *events):
            _produce(producer, message)
            count += 1
        producer.poll(0)
    remaining = producer.flush(120)
    return {"messages": count - remaining, "seconds": time.perf_counter() - started}


def publish_grouped(spec: dict[str, Any]) -> dict[str, Any]:
    """``sessions`` sessions of ``events_each`` clicks, straight to Kafka grouped by
    partition as a busy gateway groups concurrent requests (``group`` requests a message):
    a million live sessions without millions of messages on the local broker."""
    settings = Settings(kafka_bootstrap=spec["bootstrap"], topic_prefix=spec["topic_prefix"])
    topics = Topics(settings.topic_prefix)
    codec = AvroCodec()
    builder = IngestMessages(codec, topics)
    producer = Producer(settings.kafka_producer_config())
    partitions, group = settings.topic_partitions, spec["group"]
    now = time.time()
    pending: dict[tuple[str, int], list[Any]] = {}
    count = 0
    started = time.perf_counter()

    def add(topic: str, kind: str, partition: int, record: Any) -> None:
        nonlocal count
        records = pending.setdefault((topic, partition), [])
        records.append(record)
        if len(records) >= group:
            value = codec.encode(kind, {"requests": records})
            _produce(producer, OutgoingMessage(topic, None, value, partition=partition))
            pending[(topic, partition)] = []
            count += 1
            producer.poll(0)

    for _ in range(spec["sessions"]):
        session_id = _id()
        partition = partition_of(session_id, partitions)
        session = builder.session_record(SessionIn.model_validate(session_json(session_id)), now)
        add(topics.sessions, "clickstream.SessionRegisteredBatch", partition, session)
        body = EventsIn.model_validate(events_json(session_id, spec["events_each"]))
        for record, _ in builder.events_records(body, now):
            add(topics.events, "clickstream.SessionEventsBatch", partition, record)
    for (topic, partition), records in pending.items():
        if records:
            kind = (
                "clickstream.SessionRegisteredBatch"
                if topic == topics.sessions
                else "clickstream.SessionEventsBatch"
            )
            value = codec.encode(kind, {"requests": records})
            _produce(producer, OutgoingMessage(topic, None, value, partition=partition))
            count += 1
    remaining = producer.flush(300)
    return {"messages": count - remaining, "seconds": time.perf_counter() - started}


def _summary(tally: Tally, elapsed: float, events_per_request: int) -> dict[str, Any]:
    return {
        "requests_ok": tally.ok,
        "requests_failed": tally.failed,
        "failed_statuses": tally.statuses,
        "seconds": elapsed,
        "requests_per_s": tally.ok / elapsed,
        "events_per_s": tally.ok * events_per_request / elapsed,
        "p50_ms": percentile(tally.latencies_ms, 0.50),
        "p99_ms": percentile(tally.latencies_ms, 0.99),
    }


SCENARIOS = {
    "closed_loop": closed_loop,
    "end_to_end": end_to_end,
}
SYNC_SCENARIOS = {
    "publish_grouped": publish_grouped,
    "publish_sessions": publish_sessions,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    wall = time.perf_counter()
    kind = spec["scenario"]
    if kind in SYNC_SCENARIOS:
        result = SYNC_SCENARIOS[kind](spec)
    else:
        result = uvloop.run(SCENARIOS[kind](spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall
    result["load_cpu_cores"] = (usage.ru_utime + usage.ru_stime) / wall
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""Prometheus metrics of the stream worker, served on ``GET /metrics`` of its web server
(``CLICKSTREAM_WORKER_WEB_HOST``/``_PORT``, loopback by default; no credential, as the
gateway's).

Counted by the join agent (each message once, when it is acknowledged):

- ``clickstream_worker_messages_total{topic,kind}``: source messages handled, ``kind`` being
  the schema the message's header names (``SessionRegistered``, ``SessionEvents``,
  ``ReleaseMarker``, ``PartitionTick``, ...), or ``undecodable`` when it names none.
- ``clickstream_dead_letters_total{reason}``: dead letters Kafka acknowledged.
- ``clickstream_worker_handler_retries_total``: retries of a failed handler (``failures``).

Counted by the release coordinator of the leading worker, once the transaction holding the
outcome commits (an aborted poll is replayed and would count twice otherwise):

- ``clickstream_releases_total{outcome}``: ``released`` or ``empty``.
- ``clickstream_batches_announced_total``: batches announced on the batch topic.
- ``clickstream_release_duration_seconds``: from the release's request time (the gateway's
  clock) to the coordinator marking the batch released.

Read at scrape time, from this worker's own partitions:

- ``clickstream_worker_consumer_lag{topic,partition}``: per source topic partition, its end
  offset minus the position the agent has handled (or the committed offset, before the
  agent handled anything there).
- ``clickstream_worker_table_entries{table}``: entries of the ``sessions``, ``pieces`` and
  ``partitions`` tables (active partitions; with RocksDB, counting walks the keys).

Every worker counts its own: sum over workers (the dashboard does).
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING

from faust.exceptions import ConsumerNotStarted
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream_app import dead_letters

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sized

    import faust
    from faust.types import TP, Message
    from faust.web import Request, Response, View
    from prometheus_client.metrics_core import Metric

    from batches.store import Batch
    from schemas import AvroCodec
    from stream_app.tables import StreamTables

METRICS_PATH = "/metrics"
UNDECODABLE = "undecodable"
# Releases wait for every partition's markers: from under a second to minutes under load.
_RELEASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_HEADER = struct.Struct(">bI")  # the Confluent wire format's magic byte and schema id

MESSAGES = Counter(
    "clickstream_worker_messages",
    "Source messages handled by the join agent, by topic and schema kind",
    ["topic", "kind"],
    registry=None,
)
DEAD_LETTERS = Counter(
    "clickstream_dead_letters",
    "Dead letters sent (acknowledged by Kafka), by reason",
    ["reason"],
    registry=None,
)
HANDLER_RETRIES = Counter(
    "clickstream_worker_handler_retries",
    "Retries of a message whose handling failed",
    registry=None,
)
RELEASES_TOTAL = Counter(
    "clickstream_releases",
    "Releases completed by the coordinator, by outcome",
    ["outcome"],
    registry=None,
)
BATCHES_ANNOUNCED = Counter(
    "clickstream_batches_announced",
    "Batches announced on the batch topic",
    registry=None,
)
RELEASE_DURATION = Histogram(
    "clickstream_release_duration_seconds",
    "From a release's request to its batch marked released",
    buckets=_RELEASE_BUCKETS,
    registry=None,
)
for _reason in (
    dead_letters.ORPHAN_EVENT_EXPIRED,
    dead_letters.CONFLICTING_REGISTRATION,
    dead_letters.SESSION_NOT_REGISTERED,
    dead_letters.UNDECODABLE_MESSAGE,
    dead_letters.UNEXPECTED_MESSAGE,
    dead_letters.SNAPSHOT_REFUSED,
):
    DEAD_LETTERS.labels(_reason)
for _outcome in ("released", "empty"):
    RELEASES_TOTAL.labels(_outcome)

# The next offset the agent will handle, per source partition (written on the app's loop).
_handled_up_to: dict[TP, int] = {}


def handled(avro: AvroCodec, message: Message) -> None:
    """The agent acknowledged ``message``: count it and move its partition's position."""
    MESSAGES.labels(message.topic, _kind(avro, message.value)).inc()
    _handled_up_to[message.tp] = message.offset + 1


def _kind(avro: AvroCodec, value: bytes | None) -> str:
    """The schema the header names, without decoding the body."""
    if value is None or len(value) < _HEADER.size:
        return UNDECODABLE
    magic, schema_id = _HEADER.unpack_from(value)
    name = _names_by_id(avro).get(schema_id) if magic == 0 else None
    return name.rsplit(".", 1)[-1] if name else UNDECODABLE


@functools.cache
def _names_by_id(avro: AvroCodec) -> dict[int, str]:
    return {avro.schema_id(name): name for name in avro.names}


class ReleaseOutcomes:
    """Outcomes of the coordinator's current transaction, counted when it commits. Used
    from the coordinator's thread only."""

    def __init__(self) -> None:
        self._pending: list[Batch | None] = []  # a released batch, or None for empty

    def begin(self) -> None:
        """A new transaction: what an aborted one held is dropped (it is replayed)."""
        self._pending.clear()

    def empty(self) -> None:
        self._pending.append(None)

    def announced(self, batch: Batch) -> None:
        self._pending.append(batch)

    def committed(self) -> None:
        pending, self._pending = self._pending, []
        for batch in pending:
            if batch is None:
                RELEASES_TOTAL.labels("empty").inc()
                continue
            RELEASES_TOTAL.labels("released").inc()
            BATCHES_ANNOUNCED.inc()
            released_at_ms = batch.released_at_ms or batch.requested_at_ms
            # The request time comes from the gateway's clock: never a negative duration.
            RELEASE_DURATION.observe(max(released_at_ms - batch.requested_at_ms, 0) / 1000)


RELEASES = ReleaseOutcomes()


class _ScrapeTime(Collector):
    """Consumer lag and table sizes, read from the app when Prometheus scrapes."""

    def __init__(self, app: faust.App, tables: StreamTables, sources: Iterable[str]) -> None:
        self._app = app
        self._tables: dict[str, Sized] = {
            "sessions": tables.sessions,
            "pieces": tables.pieces,
            "partitions": tables.partitions,
        }
        self._sources = frozenset(sources)

    def describe(self) -> Iterable[Metric]:
        return []  # names are not checked at registration: nothing is read before a scrape

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "clickstream_worker_consumer_lag",
            "Messages of a source partition not handled yet by this worker",
            labels=["topic", "partition"],
        )
        for tp, value in self._lags():
            lag.add_metric([tp.topic, str(tp.partition)], value)
        yield lag
        entries = GaugeMetricFamily(
            "clickstream_worker_table_entries",
            "Entries in this worker's active table partitions",
            labels=["table"],
        )
        for name, table in self._tables.items():
            entries.add_metric([name], len(table))
        yield entries

    def _lags(self) -> Iterator[tuple[TP, int]]:
        consumer = self._app.consumer
        # faust's committed offsets are the next offsets to read, as Kafka's.
        committed = getattr(consumer, "_committed_offset", {})
        try:
            assigned = sorted(tp for tp in consumer.assignment() if tp.topic in self._sources)
        except ConsumerNotStarted:
            return
        for tp in assigned:
            try:
                end = consumer.highwater(tp)
            except (AssertionError, ConsumerNotStarted):
                continue  # revoked meanwhile (aiokafka asserts the assignment)
            if end is None or end < 0:
                continue  # not fetched yet: unknown
            position = max(_handled_up_to.get(tp, 0), committed.get(tp) or 0)
            yield tp, max(end - position, 0)


def attach_metrics(app: faust.App, tables: StreamTables, sources: Iterable[str]) -> None:
    """Serve ``GET /metrics`` on the worker's web server. ``sources``: the topics the join
    agent reads, whose lag is shown."""
    registry = CollectorRegistry()
    for metric in (
        MESSAGES,
        DEAD_LETTERS,
        HANDLER_RETRIES,
        RELEASES_TOTAL,
        BATCHES_ANNOUNCED,
        RELEASE_DURATION,
    ):
        registry.register(metric)
    registry.register(_ScrapeTime(app, tables, sources))
    ProcessCollector(registry=registry)  # the worker's memory and CPU

    @app.page(METRICS_PATH)
    async def metrics(web: View, request: Request) -> Response:
        """Prometheus text exposition."""
        # aiohttp refuses a charset in content_type=, so the header is set whole.
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

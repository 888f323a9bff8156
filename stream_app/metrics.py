"""Prometheus metrics of the stream worker, served on ``GET /metrics`` of its web server
(``CLICKSTREAM_WORKER_WEB_HOST``/``_PORT``, loopback by default; no credential, as the
gateway's).

Counted when a partition's batch commits (each message once):

- ``clickstream_worker_messages_total{topic,kind}``: source messages handled, ``kind`` being
  the schema of the message (``SessionRegistered``, ``SessionEvents``, ``ReleaseMarker``,
  ``PartitionTick``, ...), ``undecodable`` for one that is not Avro of the contract and
  ``failed`` for one dead-lettered because handling it failed.
- ``clickstream_dead_letters_total{reason}``: dead letters committed.
- ``clickstream_worker_handler_retries_total``: retries of a partition whose handling failed.

Counted by the release coordinator of the leading worker, once the transaction holding the
outcome commits (an aborted poll is replayed and would count twice otherwise):

- ``clickstream_releases_total{outcome}``: ``released`` or ``empty``.
- ``clickstream_batches_announced_total``: batches announced on the batch topic.
- ``clickstream_release_duration_seconds``: from the release's request time (the gateway's
  clock) to the coordinator marking the batch released.

Kept by the worker as it goes, never by reading its state at scrape time:

- ``clickstream_worker_consumer_lag{topic,partition}``: per source topic partition, its end
  offset (as last fetched) minus the position of the worker.
- ``clickstream_worker_table_entries{table="sessions"}``: sessions in this worker's state.

Every worker counts its own: sum over workers (the dashboard does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    from collections.abc import Callable, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

    from batches.store import Batch
    from stream_app.outgoing import Outgoing

METRICS_PATH = "/metrics"
UNDECODABLE = "undecodable"
# Releases wait for every partition's markers: from under a second to minutes under load.
_RELEASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

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
    dead_letters.INVALID_MESSAGE,
    dead_letters.HANDLING_FAILED,
):
    DEAD_LETTERS.labels(_reason)
for _outcome in ("released", "empty"):
    RELEASES_TOTAL.labels(_outcome)


def handled(kinds: Iterable[tuple[str, str]], out: Iterable[Outgoing]) -> None:
    """A partition's batch committed: its messages (topic, kind) and what it sent."""
    counts: dict[tuple[str, str], int] = {}
    for pair in kinds:
        counts[pair] = counts.get(pair, 0) + 1
    for (topic, kind), count in counts.items():
        MESSAGES.labels(topic, kind).inc(count)
    for message in out:
        if message.reason is not None:
            DEAD_LETTERS.labels(message.reason).inc()


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


class _WorkerGauges(Collector):
    """Consumer lag and state sizes, as the worker last noted them."""

    def __init__(self, read: Callable[[], tuple[dict[tuple[str, int], int], int]]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return []  # names are not checked at registration: nothing is read before a scrape

    def collect(self) -> Iterator[Metric]:
        lags, sessions = self._read()
        lag = GaugeMetricFamily(
            "clickstream_worker_consumer_lag",
            "Messages of a source partition not handled yet by this worker",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(lags.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        entries = GaugeMetricFamily(
            "clickstream_worker_table_entries",
            "Sessions in this worker's state",
            labels=["table"],
        )
        entries.add_metric(["sessions"], sessions)
        yield entries


def registry(read: Callable[[], tuple[dict[tuple[str, int], int], int]]) -> CollectorRegistry:
    """The worker's metrics; ``read`` gives the lags and the session count as last noted."""
    found = CollectorRegistry()
    for metric in (
        MESSAGES,
        DEAD_LETTERS,
        HANDLER_RETRIES,
        RELEASES_TOTAL,
        BATCHES_ANNOUNCED,
        RELEASE_DURATION,
    ):
        found.register(metric)
    found.register(_WorkerGauges(read))
    ProcessCollector(registry=found)  # the worker's memory and CPU
    return found


def exposition(found: CollectorRegistry) -> tuple[bytes, str]:
    """Prometheus text exposition: the body and its content type."""
    return generate_latest(found), CONTENT_TYPE_LATEST

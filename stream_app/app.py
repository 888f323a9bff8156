"""The stream worker's faust app: topics, tables, the join agent and the session view."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP

from schemas import AvroCodec, Topics
from stream_app.agent import JoinAgent
from stream_app.failures import FailurePolicy
from stream_app.faust_fixes import (
    FixedTransport,
    back_off_empty_fetches,
    bound_leave_group,
    check_faust_internals,
    committed_offset,
)
from stream_app.kafka_security import faust_kafka_security
from stream_app.metrics import attach_metrics
from stream_app.session_view import attach_session_view
from stream_app.tables import declare_tables
from stream_app.topics import declare_topics

if TYPE_CHECKING:
    from faust.types import TransportT

    from batches.store import BatchStore
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)
_LEAVE_GROUP_SECONDS = 1.5


class StreamApp(faust.App):
    """A faust app whose workers are static group members that leave on a clean stop, with
    the corrections of ``faust_fixes``.

    Static membership (``CLICKSTREAM_WORKER_ID``) lets a crashed worker take its partitions
    back the moment it restarts, without waiting for the group to notice it died. Static
    members do not leave their group on close, so a stopped worker would keep its
    partitions until its session expires; a clean stop here leaves explicitly, and the
    partitions move at once (as Kafka Streams' ``close(leaveGroup=true)``).
    """

    def _new_transport(self) -> TransportT:
        return FixedTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        # aiokafka leaves only as a dynamic member (faust_fixes, fix 5; checked at start-up).
        coordinator = getattr(
            getattr(getattr(self.consumer, "_thread", None), "_consumer", None),
            "_coordinator",
            None,
        )
        if coordinator is not None:
            coordinator._group_instance_id = None
        else:  # never started, or aiokafka's objects were renamed
            logger.warning("consumer group not left on stop: no aiokafka coordinator found")
        bound_leave_group(_LEAVE_GROUP_SECONDS)  # a paused broker must not hold the stop
        await super().on_stop()


def create_app(
    settings: Settings,
    store: BatchStore,
    avro: AvroCodec | None = None,
    failures: FailurePolicy | None = None,
) -> faust.App:
    """The faust app of one worker. Workers of a deployment share its consumer group
    (``<prefix>stream``) and split the partitions between them.

    Raises :class:`~stream_app.faust_fixes.FaustInternalsChangedError` if faust or aiokafka
    is not the code ``faust_fixes`` was written for."""
    check_faust_internals()
    avro = avro or AvroCodec()
    back_off_empty_fetches(settings.worker_empty_fetch_backoff_seconds)
    names = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_common_config()["bootstrap.servers"]
    web_url = f"http://{settings.worker_web_host}:{settings.worker_web_port}"
    app = StreamApp(
        names.stream_app_id,
        **faust_kafka_security(settings.kafka_extra),
        broker=";".join(f"kafka://{server}" for server in bootstrap.split(",")),
        store="rocksdb://" if settings.worker_store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir / f"worker-{settings.worker_web_port}"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.worker_session_timeout_seconds,
        broker_heartbeat_interval=settings.worker_session_timeout_seconds / 5,
        broker_rebalance_timeout=settings.worker_rebalance_timeout_seconds,
        consumer_group_instance_id=settings.worker_instance_id,
        producer_acks=-1,
        producer_linger=settings.worker_producer_linger_seconds,
        # Kafka's own limit (faust's default is 1,000,000): a table value holding a request
        # at the body limit (a registration, or one event in a piece) still fits.
        producer_max_request_size=1_048_576,
        web_host=settings.worker_web_host,
        # Only what the gateway needs (the session view, readiness): no table dumps, no
        # assignment, graph or statistics pages.
        web_tables_enabled=False,
        web_router_enabled=settings.worker_web_router,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        canonical_url=web_url,
        web_in_thread=False,
    )
    topics = declare_topics(app, names)
    tables = declare_tables(app, avro, settings.topic_partitions, settings.changelog_segment_bytes)
    failures = failures or FailurePolicy(settings.worker_retry_seconds)
    agent = JoinAgent(
        settings,
        names,
        avro,
        topics,
        tables,
        store,
        failures,
        committed=lambda topic, partition: committed_offset(app, TP(topic, partition)),
    )
    app.agent(topics.source, name="join", concurrency=1)(agent)

    @app.on_partitions_revoked.connect
    async def partitions_moved(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        agent.forget_derived_state()

    attach_session_view(app, tables)
    attach_metrics(app, tables, names.ingest())
    return app


class Leadership:
    """Whether this worker leads its group, readable from other threads: updated by the
    app itself on every rebalance (faust objects must not be touched off its loop)."""

    def __init__(self, app: faust.App) -> None:
        self._leading = False

        @app.on_partitions_revoked.connect
        async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self._leading = False

        @app.on_partitions_assigned.connect
        async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self._leading = sender.is_leader()

    def __call__(self) -> bool:
        return self._leading

"""The stream worker's faust app: topics, tables, the join agent and the session view."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from schemas import AvroCodec, Topics
from stream_app.agent import JoinAgent
from stream_app.session_view import attach_session_view
from stream_app.tables import declare_tables
from stream_app.topics import declare_topics

if TYPE_CHECKING:
    from clickstream.batch_store import BatchStore
    from clickstream.settings import Settings


def create_app(settings: Settings, store: BatchStore, avro: AvroCodec | None = None) -> faust.App:
    """The faust app of one worker. Workers of a deployment share its consumer group
    (``<prefix>stream``) and split the partitions between them."""
    avro = avro or AvroCodec()
    names = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_common_config()["bootstrap.servers"]
    web_url = f"http://{settings.worker_web_host}:{settings.worker_web_port}"
    app = faust.App(
        names.stream_app_id,
        broker=";".join(f"kafka://{server}" for server in bootstrap.split(",")),
        store="rocksdb://" if settings.worker_store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir / f"worker-{settings.worker_web_port}"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        canonical_url=web_url,
        web_in_thread=False,
    )
    topics = declare_topics(app, names)
    tables = declare_tables(app, avro, settings.topic_partitions)
    agent = JoinAgent(settings, names, avro, topics, tables, store)
    app.agent(topics.source, name="join", concurrency=1)(agent)
    attach_session_view(app, tables.sessions)
    return app

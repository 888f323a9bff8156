"""Creating the pipeline's topics, before any producer or worker uses them.

A session's messages must share a partition number on the sessions and events topics, so
topics are created up front with the partitions the settings say, never auto-created.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from clickstream.exceptions import ClickstreamError
from schemas import Topics

if TYPE_CHECKING:
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)


class TopicSetupError(ClickstreamError, ValueError):
    """A topic exists with another layout than the settings ask for."""


def min_insync_replicas(replication_factor: int) -> int:
    """Replicas that must have a message before an acks=all producer hears it was written:
    all but one, so a message acknowledged survives losing any one broker, and writes go
    on while one broker is down. With one replica (the local broker), that one."""
    return max(1, replication_factor - 1)


def topic_config(topics: Topics, name: str, replication_factor: int) -> dict[str, str]:
    """The configuration a topic of the pipeline is created with.

    The batch topic is kept for ever (``retention.ms=-1``): it is the record of every
    release, where a repeated release finds its answer and a new fine-tuning group reads
    every batch from the first; it holds two small messages per release.
    """
    config = {"min.insync.replicas": str(min_insync_replicas(replication_factor))}
    if name == topics.batches:
        config["retention.ms"] = "-1"
    return config


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every topic of the deployment that is missing; return the names created.

    Topics are created with the configuration of :func:`topic_config`; an existing one
    keeps its own.
    Existing topics are checked: a partition count other than ``topic_partitions`` is an
    error, since a session's messages would no longer share a partition number.
    """
    admin = AdminClient(settings.kafka_common_config())
    topics = Topics(settings.topic_prefix)
    wanted = topics.layout(settings.topic_partitions)
    existing = admin.list_topics(timeout=timeout).topics
    created = []
    replication = settings.topic_replication_factor
    new_topics = [
        NewTopic(name, partitions, replication, config=topic_config(topics, name, replication))
        for name, partitions in wanted.items()
        if name not in existing
    ]
    if new_topics:
        for name, future in admin.create_topics(new_topics, request_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicSetupError(f"cannot create topic {name}: {exc}") from exc
            else:
                created.append(name)
                logger.info("topic created topic=%s partitions=%s", name, wanted[name])
        existing = admin.list_topics(timeout=timeout).topics
    for name, expected in wanted.items():
        partitions = len(existing[name].partitions) if name in existing else 0
        if partitions != expected:
            raise TopicSetupError(
                f"topic {name} has {partitions} partitions where {expected} are needed "
                "(CLICKSTREAM_TOPIC_PARTITIONS)"
            )
    return created

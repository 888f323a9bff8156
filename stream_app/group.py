"""Leaving the consumer group on a clean stop.

Workers are static members (``group.instance.id``), so a restarted worker gets its
partitions back at once; but a static member does not leave its group when it closes
(KIP-345), and its partitions would wait for its session to expire (for ever on the local
broker, which never expires one). Kafka Streams removes the member through the admin
client (``removeMembersFromConsumerGroup``), which confluent-kafka lacks: here the member
is looked up in the group's description and sent a LeaveGroup by its member id through
aiokafka's client, as a dynamic member leaves. The group then hands its partitions over
at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.group import LeaveGroupRequest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream_app.kafka_security import aiokafka_security

if TYPE_CHECKING:
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)


def member_id(settings: Settings, group: str, instance_id: str, timeout: float) -> str | None:
    """The member id of the static member ``instance_id`` in ``group`` now, if any."""
    admin = AdminClient(settings.kafka_common_config())
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        members = described.result(timeout).members
    except KafkaException as exc:
        logger.warning("consumer group not described group=%s error=%s", group, exc)
        return None
    return next((m.member_id for m in members if m.group_instance_id == instance_id), None)


def leave(settings: Settings, group: str, member: str, timeout: float) -> bool:
    """Take ``member`` out of ``group``; whether the broker said so in time."""

    async def send() -> bool:
        bootstrap = settings.kafka_common_config()["bootstrap.servers"]
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, **aiokafka_security(settings.kafka_extra)
        )
        try:
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            answer = await client.send(node, LeaveGroupRequest(group, member))
            return bool(answer.error_code == 0)
        finally:
            await client.close()

    try:
        return asyncio.run(asyncio.wait_for(send(), timeout))
    except (TimeoutError, OSError, Exception) as exc:  # noqa: BLE001 - a courtesy, never fatal
        logger.warning("consumer group not left group=%s error=%r", group, exc)
        return False

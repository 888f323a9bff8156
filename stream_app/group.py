"""Leaving the consumer group on a clean stop.

Workers are static members (``group.instance.id``), so a restarted worker gets its
partitions back at once; but a static member does not leave its group when it closes
(KIP-345), and its partitions would wait for its session to expire (for ever on the local
broker, which never expires one). Kafka Streams removes the member through the admin
client (``removeMembersFromConsumerGroup``), which confluent-kafka lacks: here the member
id the consumer holds is sent a LeaveGroup through aiokafka's client, as a dynamic member
leaves. The group then hands its partitions over at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.group import LeaveGroupRequest

from stream_app.kafka_security import aiokafka_security

if TYPE_CHECKING:
    from clickstream.settings import Settings

logger = logging.getLogger(__name__)


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
        left = asyncio.run(asyncio.wait_for(send(), timeout))
    except (TimeoutError, OSError, Exception) as exc:  # noqa: BLE001 - a courtesy, never fatal
        logger.warning("consumer group not left group=%s error=%r", group, exc)
        return False
    if left:
        logger.info("consumer group left group=%s member=%s", group, member)
    else:
        logger.warning("consumer group not left group=%s member=%s", group, member)
    return left

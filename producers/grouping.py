"""Fewer messages than clicks: the requests a gateway accepts together, bound for one
partition, go to Kafka as one message.

A request's events (or registration) wait in the group of their partition until the event
loop has nothing else ready, then the group is encoded and produced at once: no timer, so
no latency is added, and the busier the gateway, the more requests share a message. Each
request is answered once its group is acknowledged (or 503 if it is not, for every request
in it). A group alone is sent as the message a request has always been (``SessionEvents``
keyed by its session); two or more as a ``SessionEventsBatch`` (``SessionRegisteredBatch``)
written to the partition Java's partitioner gives their session ids.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.partitioner import murmur2

from producers.exceptions import PublishUnavailableError
from producers.ingest import MAX_EVENTS_MESSAGE_BYTES
from producers.publisher import OutgoingMessage
from schemas import SchemaName

if TYPE_CHECKING:
    from producers.publisher import KafkaPublisher
    from schemas import AvroCodec, Topics
    from schemas.records import SessionEvents, SessionRegistered

logger = logging.getLogger(__name__)

_WAIT_MARGIN_SECONDS = 1.0


def partition_of(session_id: str, partitions: int) -> int:
    """The partition a keyed message of the session goes to (Java's murmur2 partitioner,
    which the pipeline's producers use: ``partitioner=murmur2_random``)."""
    return int(murmur2(session_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class _Group:
    future: asyncio.Future[None]
    records: list[Any] = field(default_factory=list)
    size: int = 0
    sent: bool = False


@dataclass(frozen=True, slots=True)
class _Kind:
    topic: str
    single: SchemaName
    batch: SchemaName


class GroupingPublisher:
    """Publishes requests' records, grouped by partition.

    Args:
        publisher: the Kafka publisher.
        codec: encodes the messages.
        topics: the topic names.
        partitions: the partition count of the ingest topics (``CLICKSTREAM_TOPIC_PARTITIONS``,
            checked against the broker when the gateway starts); None: no grouping, every
            request its own messages.
        max_bytes: a group is sent once its records reach about this many bytes.
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        codec: AvroCodec,
        topics: Topics,
        partitions: int | None,
        max_bytes: int = MAX_EVENTS_MESSAGE_BYTES,
    ) -> None:
        self._publisher = publisher
        self._codec = codec
        self._partitions = partitions
        self._max_bytes = max_bytes
        self._events = _Kind(
            topics.events, SchemaName.SESSION_EVENTS, SchemaName.SESSION_EVENTS_BATCH
        )
        self._sessions = _Kind(
            topics.sessions, SchemaName.SESSION_REGISTERED, SchemaName.SESSION_REGISTERED_BATCH
        )
        self._groups: dict[tuple[str, int], _Group] = {}

    async def events(self, records: list[tuple[SessionEvents, int]]) -> None:
        """Publish one request's events (its SessionEvents records and their sizes): a
        request of one record joins its partition's group, a larger one goes alone."""
        if len(records) == 1 and self._partitions is not None:
            record, size = records[0]
            await self._join(self._events, self._partitions, record, size)
            return
        await self._publisher.publish([self._alone(self._events, r) for r, _ in records])

    async def session(self, record: SessionRegistered, size: int) -> None:
        """Publish one request's registration (``size``: about its bytes)."""
        if self._partitions is None:
            await self._publisher.publish([self._alone(self._sessions, record)])
            return
        await self._join(self._sessions, self._partitions, record, size)

    def _alone(self, kind: _Kind, record: Any) -> OutgoingMessage:
        return OutgoingMessage(
            kind.topic, record["session_id"].encode(), self._codec.encode(kind.single, record)
        )

    async def _join(self, kind: _Kind, partitions: int, record: Any, size: int) -> None:
        key = (kind.topic, partition_of(record["session_id"], partitions))
        group = self._groups.get(key)
        if group is not None and group.records and group.size + size > self._max_bytes:
            self._send(kind, key, group)
            group = None
        if group is None:
            loop = asyncio.get_running_loop()
            group = _Group(loop.create_future())
            self._groups[key] = group
            # Sent once the loop has run what is ready now: the requests parsed meanwhile.
            loop.call_soon(self._send, kind, key, group)
        group.records.append(record)
        group.size += size
        try:
            await asyncio.wait_for(
                asyncio.shield(group.future), self._publisher.timeout + _WAIT_MARGIN_SECONDS
            )
        except TimeoutError:
            raise PublishUnavailableError("Kafka did not acknowledge in time") from None

    def _send(self, kind: _Kind, key: tuple[str, int], group: _Group) -> None:
        if self._groups.get(key) is group:
            del self._groups[key]
        if group.sent:
            return
        group.sent = True
        records = group.records
        try:
            if len(records) == 1:
                message = self._alone(kind, records[0])
            else:
                message = OutgoingMessage(
                    kind.topic,
                    None,
                    self._codec.encode(kind.batch, {"requests": records}),
                    partition=key[1],
                )
        except Exception as exc:  # noqa: BLE001 - every waiter of the group hears of it
            logger.exception("a group of requests could not be encoded topic=%s", kind.topic)
            group.future.set_exception(PublishUnavailableError(f"not encoded: {exc}"))
            group.future.exception()  # retrieved: no warning when nobody waits any more
            return
        task = asyncio.get_running_loop().create_task(self._publish(message, group))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _publish(self, message: OutgoingMessage, group: _Group) -> None:
        try:
            await self._publisher.publish([message])
        except Exception as exc:  # noqa: BLE001 - every waiter of the group gets it
            if not group.future.done():
                group.future.set_exception(exc)
            group.future.exception()  # retrieved: no warning when nobody waits any more
        else:
            if not group.future.done():
                group.future.set_result(None)


# Tasks publishing a group, referenced until done (the loop only keeps weak references).
_PENDING: set[asyncio.Task[None]] = set()

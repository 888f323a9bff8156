"""Reading back what was published, as a consumer of the topics would."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

if TYPE_CHECKING:
    from confluent_kafka import Message

    from schemas import AvroCodec


@dataclass(frozen=True)
class Published:
    """One message on a topic, decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    name: str
    record: dict[str, Any]
    raw: bytes


class TopicReader:
    """Reads a topic from its beginning up to its end at the time of the call."""

    def __init__(self, kafka_config: dict[str, Any], codec: AvroCodec) -> None:
        self._config = kafka_config
        self._codec = codec

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition, its first offset held and the offset after its last record."""
        consumer = Consumer({**self._config, "group.id": f"reader-{uuid.uuid4().hex}"})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in partitions
            }
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        return {p: end for p, (_, end) in self.watermarks(topic).items()}

    def count(self, topic: str) -> int:
        return sum(self.end_offsets(topic).values())

    def read_events(self, topic: str) -> list[tuple[Published, dict[str, Any]]]:
        """Each event on an events topic, as a SessionEvent record, with its message (one
        request's SessionEvents, or the requests a gateway grouped in a SessionEventsBatch)."""
        out = []
        for message in self.read(topic):
            if message.name == "clickstream.SessionEvents":
                requests = [message.record]
            elif message.name == "clickstream.SessionEventsBatch":
                requests = message.record["requests"]
            else:
                continue
            for request in requests:
                common = {
                    "session_id": request["session_id"],
                    "received_at_ms": request["received_at_ms"],
                }
                out.extend((message, {**common, **item}) for item in request["events"])
        return out

    def read_registrations(self, topic: str) -> list[tuple[Published, dict[str, Any]]]:
        """Each registration on a sessions topic, alone or grouped, with its message."""
        out: list[tuple[Published, dict[str, Any]]] = []
        for message in self.read(topic):
            if message.name == "clickstream.SessionRegistered":
                out.append((message, message.record))
            elif message.name == "clickstream.SessionRegisteredBatch":
                out.extend((message, request) for request in message.record["requests"])
        return out

    def read(self, topic: str, timeout: float = 20.0) -> list[Published]:
        out = []
        for message in self.read_raw(topic, timeout):
            value = message.value()
            decoded = self._codec.decode(value)
            out.append(
                Published(
                    topic,
                    message.partition(),
                    message.offset(),
                    message.key(),
                    decoded.name,
                    decoded.record,
                    value,
                )
            )
        return sorted(out, key=lambda m: (m.partition, m.offset))

    def read_raw(self, topic: str, timeout: float = 20.0) -> list[Message]:
        """Every message of the topic, undecoded (tombstones too), as a reader from its
        beginning gets them: what compaction left, in no particular order across partitions."""
        ends = {p: end for p, end in self.end_offsets(topic).items() if end > 0}
        if not ends:
            return []
        consumer = Consumer(
            {
                **self._config,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends]
            consumer.assign(assignment)
            out: list[Message] = []
            deadline = time.monotonic() + timeout
            # Transaction markers take offsets too: done once every position reaches its end.
            while any(
                tp.offset < ends[tp.partition]
                for tp in consumer.position([TopicPartition(topic, p) for p in ends])
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: did not reach the end offsets {ends}")
                for message in consumer.consume(1000, timeout=0.1):
                    if message.error():
                        raise RuntimeError(message.error())
                    if message.offset() < ends[message.partition()]:
                        out.append(message)
            return out
        finally:
            consumer.close()

"""Publishing to Kafka with acknowledgement: a request is answered 2xx only once Kafka
has acknowledged every one of its messages (acks=all, idempotent producer)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from producers.exceptions import PublishUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from confluent_kafka import Message

logger = logging.getLogger(__name__)

# Added to librdkafka's own message timeout before we give up waiting ourselves.
_WAIT_MARGIN_SECONDS = 1.0
_ERROR_LOG_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message ready for Kafka: encoded value, key and, for control messages, a partition."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


class _Acknowledgement:
    """Counts a request's delivery reports; reports once: all delivered, or the first error."""

    __slots__ = ("_done", "_remaining")

    def __init__(self, count: int, done: Callable[[Exception | None], None]) -> None:
        self._remaining = count
        self._done: Callable[[Exception | None], None] | None = done

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        done = self._done
        if done is None:
            return
        if err is not None:
            self._done = None
            done(PublishUnavailableError(f"Kafka did not acknowledge: {err.str()}"))
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._done = None
            done(None)

    def fail(self, exc: Exception) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(exc)


class KafkaPublisher:
    """A confluent-kafka producer with a thread serving its delivery reports.

    Args:
        config: librdkafka settings (see ``Settings.kafka_producer_config``).
        timeout: seconds to wait for acknowledgement before giving up
            (``CLICKSTREAM_PUBLISH_TIMEOUT_SECONDS``; librdkafka's message timeout too).
    """

    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        self.timeout = timeout
        self._last_error_logged = -_ERROR_LOG_INTERVAL_SECONDS
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _on_error(self, err: KafkaError) -> None:
        # librdkafka reconnects by itself and reports every failed attempt: say it once.
        now = time.monotonic()
        if now - self._last_error_logged >= _ERROR_LOG_INTERVAL_SECONDS or err.fatal():
            self._last_error_logged = now
            logger.warning("kafka client error code=%s reason=%s", err.name(), err.str())

    def send(
        self, messages: Sequence[OutgoingMessage], done: Callable[[Exception | None], None]
    ) -> None:
        """Queue ``messages``; ``done`` is called once, from the delivery thread."""
        if not messages:
            done(None)
            return
        ack = _Acknowledgement(len(messages), done)
        produce = self._producer.produce
        try:
            for message in messages:
                if message.partition is None:
                    produce(message.topic, message.value, message.key, on_delivery=ack)
                else:
                    produce(
                        message.topic,
                        message.value,
                        message.key,
                        partition=message.partition,
                        on_delivery=ack,
                    )
        except BufferError as exc:
            ack.fail(PublishUnavailableError("Kafka producer queue is full"))
            logger.warning("producer queue full: %s", exc)
        except KafkaException as exc:
            ack.fail(PublishUnavailableError(f"Kafka refused the message: {exc}"))

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish and return once Kafka acknowledged all; PublishUnavailableError otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(error: Exception | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        self.send(messages, done)
        try:
            await asyncio.wait_for(future, self.timeout + _WAIT_MARGIN_SECONDS)
        except TimeoutError:
            raise PublishUnavailableError("Kafka did not acknowledge in time") from None

    def publish_sync(self, messages: Sequence[OutgoingMessage]) -> None:
        """Blocking :meth:`publish`, for code without an event loop."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def done(error: Exception | None) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.send(messages, done)
        try:
            future.result(self.timeout + _WAIT_MARGIN_SECONDS)
        except concurrent.futures.TimeoutError:
            raise PublishUnavailableError("Kafka did not acknowledge in time") from None

    def missing_topics(self, topics: Sequence[str], timeout: float = 2.0) -> list[str]:
        """Which of ``topics`` the brokers lack (a metadata call: not for the hot path)."""
        metadata = self._producer.list_topics(timeout=timeout)
        return [topic for topic in topics if topic not in metadata.topics]

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the delivery thread."""
        remaining = self._producer.flush(timeout)
        if remaining:
            logger.warning("producer closed with undelivered messages count=%s", remaining)
        self._stopping.set()
        self._poller.join()


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

"""Publishing to Kafka with acknowledgement: a request is answered 2xx only once Kafka
has acknowledged every one of its messages (acks=all, idempotent producer)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Producer

from producers.exceptions import PublishUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from confluent_kafka import Message

    from clickstream.settings import KafkaConfig

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
    """Counts a request's delivery reports; reports once: all delivered, or the first error.

    Called from whichever thread serves its producer's delivery reports (one at a time).
    """

    __slots__ = ("_done", "_remaining", "_settled")

    def __init__(
        self,
        count: int,
        done: Callable[[Exception | None], None],
        settled: Callable[[_Acknowledgement], None],
    ) -> None:
        self._remaining = count
        self._done: Callable[[Exception | None], None] | None = done
        self._settled = settled

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if self._done is None:
            return
        if err is not None:
            self.fail(PublishUnavailableError(f"Kafka did not acknowledge: {err.str()}"))
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._settle(None)

    def fail(self, exc: Exception) -> None:
        self._settle(exc)

    def _settle(self, error: Exception | None) -> None:
        done, self._done = self._done, None
        if done is not None:
            self._settled(self)
            done(error)


class _Generation:
    """One confluent-kafka producer and the requests waiting for its delivery reports."""

    __slots__ = ("fatal", "number", "pending", "producer")

    def __init__(self, number: int, config: KafkaConfig, on_error: Callable[..., None]) -> None:
        self.number = number
        self.pending: set[_Acknowledgement] = set()
        # Set once the producer reported a fatal error: it will never produce again.
        self.fatal: KafkaError | None = None
        self.producer = Producer({**config, "error_cb": functools.partial(on_error, self)})


class KafkaPublisher:
    """A confluent-kafka producer with a thread serving its delivery reports.

    An idempotent producer that hits a fatal error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER when
    the broker lost its sequence state in a restart) never produces again; librdkafka's
    advice is to replace it. The delivery thread does: a new producer takes the requests
    that come next, the old one is purged and its waiting requests fail at once with
    PublishUnavailableError (a 503: nothing is assumed published; a retry is safe).

    Args:
        config: librdkafka settings (see ``Settings.kafka_producer_config``).
        timeout: seconds to wait for acknowledgement before giving up
            (``CLICKSTREAM_PUBLISH_TIMEOUT_SECONDS``; librdkafka's message timeout too).
    """

    def __init__(self, config: KafkaConfig, timeout: float) -> None:
        self.timeout = timeout
        self._config = config
        self._last_error_logged = -_ERROR_LOG_INTERVAL_SECONDS
        self._lock = threading.Lock()
        self._generation = _Generation(1, config, self._on_error)
        self._stopping = threading.Event()
        # Outcomes for waiters on event loops, handed over once per poll rather than once
        # per request: each hand-over is a thread wake-up of the loop (delivery thread only).
        self._settlements: list[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None], Exception | None]
        ] = []
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()
        # Whether a publish went unacknowledged (Kafka's failure, not the message's) since
        # the last one that was acknowledged.
        self.failing = False

    @property
    def generation(self) -> int:
        """How many producers this publisher has had (1 until a fatal error replaced one)."""
        return self._generation.number

    def _poll(self) -> None:
        # The thread must outlive any error: without it no request is ever answered 2xx.
        while not self._stopping.is_set():
            generation = self._generation
            try:
                generation.producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    generation.fatal = error
                else:
                    logger.exception("producer poll failed error=%s", exc)
            except Exception:
                logger.exception("producer poll failed")
            if generation.fatal is not None:
                try:
                    self._replace(generation)
                except Exception:
                    logger.exception("producer replacement failed, trying again")
                    self._stopping.wait(1.0)
            self._hand_over()

    def _hand_over(self) -> None:
        """Settle the waiters whose reports this poll served: one call per event loop."""
        if not self._settlements:
            return
        settled, self._settlements = self._settlements, []
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Exception | None]]
        ] = {}
        for loop, future, error in settled:
            by_loop.setdefault(loop, []).append((future, error))
        for loop, outcomes in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, outcomes)
            except RuntimeError:  # the loop is closed: nobody waits any more
                continue

    def _replace(self, old: _Generation) -> None:
        """Swap in a new producer, then fail what waits on the old one (poll thread only)."""
        fatal = old.fatal
        new = _Generation(old.number + 1, self._config, self._on_error)
        with self._lock:
            self._generation = new
            waiting = list(old.pending)
            old.pending.clear()
        logger.error(
            "kafka producer fatal error, replaced code=%s reason=%s generation=%s waiting=%s",
            fatal.name() if fatal else None,
            fatal.str() if fatal else None,
            new.number,
            len(waiting),
        )
        error = PublishUnavailableError("Kafka producer failed and was replaced")
        for ack in waiting:
            ack.fail(error)
        # Its queues are purged without waiting; closing it must not hold up the delivery
        # thread, which now serves the new producer.
        threading.Thread(
            target=_retire, args=(old.producer,), name="kafka-retire", daemon=True
        ).start()

    def _on_error(self, generation: _Generation, err: KafkaError) -> None:
        if err.fatal():
            # Seen by the delivery thread, which replaces the producer.
            generation.fatal = err
            logger.error("kafka client fatal error code=%s reason=%s", err.name(), err.str())
            return
        # librdkafka reconnects by itself and reports every failed attempt: say it once.
        now = time.monotonic()
        if now - self._last_error_logged >= _ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_logged = now
            logger.warning("kafka client error code=%s reason=%s", err.name(), err.str())

    def unavailable(self) -> str | None:
        """Why no producer can publish right now, or None (a cheap check, no broker call)."""
        fatal = self._generation.fatal
        if fatal is not None:
            return f"Kafka producer failed: {fatal.str()}"
        if not self._poller.is_alive():
            return "the producer's delivery thread is not running"
        return None

    def send(
        self, messages: Sequence[OutgoingMessage], done: Callable[[Exception | None], None]
    ) -> None:
        """Queue ``messages``; ``done`` is called once with the outcome: from the thread that
        serves their delivery reports (the delivery thread, or :meth:`close`'s while it
        flushes), or from this one at once when nothing was queued (no messages, or the
        producer refused them)."""
        if not messages:
            done(None)
            return
        with self._lock:
            generation = self._generation
            ack = _Acknowledgement(len(messages), done, functools.partial(self._forget, generation))
            generation.pending.add(ack)
        produce = generation.producer.produce
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
            logger.warning("producer queue full error=%s", exc)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.fatal():
                generation.fatal = generation.fatal or error
            ack.fail(PublishUnavailableError(f"Kafka refused the message: {exc}"))

    def _forget(self, generation: _Generation, ack: _Acknowledgement) -> None:
        with self._lock:
            generation.pending.discard(ack)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish and return once Kafka acknowledged all; PublishUnavailableError otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.send(messages, functools.partial(self._settle_on_loop, loop, future))
        try:
            await asyncio.wait_for(future, self.timeout + _WAIT_MARGIN_SECONDS)
        except (TimeoutError, PublishUnavailableError) as exc:
            raise self._unacknowledged(exc) from None
        self.failing = False

    def publish_sync(self, messages: Sequence[OutgoingMessage]) -> None:
        """Blocking :meth:`publish`, for code without an event loop."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.send(messages, functools.partial(_settle, future))
        try:
            future.result(self.timeout + _WAIT_MARGIN_SECONDS)
        except (TimeoutError, PublishUnavailableError) as exc:
            raise self._unacknowledged(exc) from None
        self.failing = False

    def _settle_on_loop(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: Exception | None
    ) -> None:
        """Settle ``future`` on its event loop: from the delivery thread, handed over after
        the poll (one wake-up of the loop per poll, not per request)."""
        if threading.current_thread() is self._poller:
            self._settlements.append((loop, future, error))
        else:
            loop.call_soon_threadsafe(_settle, future, error)

    def _unacknowledged(self, exc: Exception) -> PublishUnavailableError:
        """What a publish whose wait ended in ``exc`` raises; notes that it failed."""
        self.failing = True
        if isinstance(exc, PublishUnavailableError):
            return exc
        return PublishUnavailableError("Kafka did not acknowledge in time")

    def partition_count(self, topic: str, timeout: float = 10.0) -> int | None:
        """How many partitions ``topic`` has; None if it is missing or cannot be read."""
        try:
            metadata = self._generation.producer.list_topics(topic, timeout=timeout)
        except KafkaException:
            return None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return len(found.partitions)

    def missing_topics(self, topics: Sequence[str], timeout: float = 2.0) -> list[str]:
        """Which of ``topics`` the brokers lack (a metadata call: not for the hot path)."""
        metadata = self._generation.producer.list_topics(timeout=timeout)
        return [topic for topic in topics if topic not in metadata.topics]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the delivery thread, then deliver what is queued, serving its delivery reports
        on this thread (up to ``timeout``); what is still undelivered then is purged, its
        waiters told at once. Last, close the producer's connections (left open, librdkafka
        would log their end when the broker stops)."""
        self._stopping.set()
        self._poller.join()
        producer = self._generation.producer
        remaining = producer.flush(timeout)
        if remaining:
            logger.warning("producer closed with undelivered messages count=%s", remaining)
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
        producer.close()


def _retire(producer: Producer) -> None:
    """Drop a producer that hit a fatal error: nothing it holds will ever be delivered."""
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.poll(0)
        producer.close()
    except Exception:
        logger.exception("closing the replaced producer failed")


def _settle_all(outcomes: list[tuple[asyncio.Future[None], Exception | None]]) -> None:
    for future, error in outcomes:
        _settle(future, error)


def _settle(
    future: asyncio.Future[None] | concurrent.futures.Future[None], error: Exception | None
) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

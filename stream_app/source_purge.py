"""Deleting from the sessions and events topics what the worker has handled and committed
(Kafka's DeleteRecords), every ``CLICKSTREAM_WORKER_SOURCE_PURGE_SECONDS`` (0: never).

Records are deleted only below the positions a committed changelog transaction recorded:
every later owner of the partition starts reading there, so nothing deleted is ever read
again, after a SIGKILL, a rebalance or a broker restart alike. Off by default: on Apache
Kafka the topics keep their retention (a replay buffer, at a cost that does not grow with
what they hold). ``clickstream run`` turns it on for its local broker, which rewrites
everything it holds in each snapshot, so that a long run does not slow down with every
click it has taken.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    from clickstream.settings import Settings

logger = logging.getLogger(__name__)

_REQUEST_SECONDS = 30.0


class SourcePurge:
    """Deletes, at most once per interval, below the positions noted since the last time.

    Args:
        settings: Kafka and ``worker_source_purge_seconds``.
    """

    def __init__(self, settings: Settings) -> None:
        self._interval = settings.worker_source_purge_seconds
        self._admin = AdminClient(settings.kafka_common_config()) if self._interval > 0 else None
        self._noted: dict[tuple[str, int], int] = {}
        self._purged: dict[tuple[str, int], int] = {}
        self._next = time.monotonic() + self._interval

    def note(self, topic: str, partition: int, committed: int | None) -> None:
        """``committed``: the first offset of ``partition`` not yet handled and committed."""
        if self._admin is not None and committed is not None:
            self._noted[(topic, partition)] = committed

    def forget(self, topic: str, partition: int) -> None:
        """The partition was given up: its next owner purges it."""
        self._noted.pop((topic, partition), None)
        self._purged.pop((topic, partition), None)

    def run_if_due(self) -> None:
        """Ask the brokers to delete what was noted, if the interval passed (not waiting for
        the answer: a failure is logged, and the next round asks again)."""
        if self._admin is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._interval
        due = {
            key: offset for key, offset in self._noted.items() if offset > self._purged.get(key, 0)
        }
        if not due:
            return
        asked = [TopicPartition(topic, number, offset) for (topic, number), offset in due.items()]
        futures = self._admin.delete_records(
            asked, request_timeout=_REQUEST_SECONDS, operation_timeout=_REQUEST_SECONDS
        )
        for tp, future in futures.items():
            future.add_done_callback(self._answered(tp))

    def _answered(self, asked: TopicPartition) -> Callable[[Future[object]], None]:
        key = (asked.topic, asked.partition)

        def done(future: Future[object]) -> None:
            error = future.exception()
            if error is None:
                # Runs on the admin client's thread: a plain dict store is atomic.
                self._purged[key] = max(self._purged.get(key, 0), asked.offset)
            else:
                logger.warning(
                    "handled records not deleted topic=%s partition=%s offset=%s error=%s",
                    asked.topic,
                    asked.partition,
                    asked.offset,
                    error,
                )

        return done

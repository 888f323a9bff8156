"""The worker's failure policy: for each message, skip, retry or stop.

- Input that can never be used (undecodable, a schema that does not belong on the topic,
  a conflicting registration, ...) is dead-lettered by the agent with the reason, and the
  stream goes on: retrying it would never help.
- Anything else that fails while handling a message (MongoDB unreachable, a Kafka send not
  acknowledged, a bug) is retried with bounded exponential backoff while the stream waits:
  the message is not acknowledged, so no offset is committed past it.
- When the retries run out, the worker stops with one clear error line, still without
  acknowledging the message: it is handled again once the worker is back (``clickstream
  run``, or the orchestrator, restarts it), and every handler is idempotent under replay.

Faust acknowledges a message whose handler raised (faust-streaming issue 315: the stream's
cleanup acks it), so the agent reads its stream with ``noack()`` and acknowledges each
message itself, only once it was handled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, stop_after_delay, wait_exponential_jitter

from stream_app import metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tenacity import RetryCallState

logger = logging.getLogger(__name__)

# The exit code of a worker stopped by a message it could not handle.
EXIT_HANDLER_FAILED = 3


class FailurePolicy:
    """Retries a message's handling, and stops the worker when that does not help.

    Args:
        retry_seconds: how long one message may be retried before the worker stops
            (``CLICKSTREAM_WORKER_RETRY_SECONDS``).
        backoff_max_seconds: the longest wait between two attempts.
    """

    def __init__(self, retry_seconds: float, backoff_max_seconds: float = 10.0) -> None:
        self._retry_seconds = retry_seconds
        self._backoff_max = backoff_max_seconds
        self.error: BaseException | None = None

    async def handle(self, handler: Callable[[], Awaitable[None]], where: str) -> None:
        """Run ``handler`` until it succeeds; if it still fails after the retry budget, stop
        the worker and never return (the message stays unacknowledged)."""
        # The first attempt runs bare: building tenacity's state for every message took
        # about 6% of the worker's interpreter time (py-spy, make profile).
        try:
            await handler()
        except Exception as exc:  # noqa: BLE001 - any failure is retried below
            metrics.HANDLER_RETRIES.inc()
            logger.warning("handling failed, retrying %s attempt=1 error=%r", where, exc)
        else:
            return
        retrying = AsyncRetrying(
            stop=stop_after_delay(self._retry_seconds),
            wait=wait_exponential_jitter(initial=0.1, max=self._backoff_max),
            before_sleep=lambda state: _log_retry(state, where),
            reraise=True,
        )
        try:
            await retrying(handler)
        except Exception as exc:  # noqa: BLE001 - every failure left is a reason to stop
            self.stop(exc, where)
            await asyncio.Event().wait()  # until the stop cancels this task

    def stop(self, exc: BaseException, where: str) -> None:
        """Stop the worker cleanly (SIGTERM to this process), remembering why."""
        if self.error is None:
            self.error = exc
            logger.critical(
                "worker stopping: a message could not be handled %s error=%r; "
                "it will be handled again when the worker restarts",
                where,
                exc,
            )
            os.kill(os.getpid(), signal.SIGTERM)


def _log_retry(state: RetryCallState, where: str) -> None:
    metrics.HANDLER_RETRIES.inc()
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    sleep = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning(
        "handling failed, retrying %s attempt=%s wait_s=%.2f error=%r",
        where,
        state.attempt_number,
        sleep,
        error,
    )

"""Stopping the worker when a librdkafka call blocks past its own timeout."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from stream_app.exceptions import KafkaCallStuckError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class CallWatchdog:
    """Stops the worker when a blocking call outlives ``seconds``.

    librdkafka's ``send_offsets_to_transaction`` can block forever, whatever its timeout,
    once the group coordinator it cached went away (librdkafka issues 5456 and 5511; seen
    here in a soak when a release came in just as the broker was back from a restart). The
    thread cannot be freed, so the worker stops (``on_stuck``: the failure policy's stop)
    and its restart, with new clients, replays the poll.
    """

    def __init__(self, seconds: float, on_stuck: Callable[[BaseException, str], None]) -> None:
        self._seconds = seconds
        self._on_stuck = on_stuck

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        error = KafkaCallStuckError(f"{what} still blocked after {self._seconds:g} s")
        timer = threading.Timer(self._seconds, self._on_stuck, (error, f"in {what}"))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

"""Readiness that a blip does not flip: Kafka checks that fail turn ``/ready`` to 503 only
once they have failed for ``CLICKSTREAM_READY_GRACE_SECONDS`` without a success between.

A pod taken out of its Service on one failed metadata request sends its clients connection
errors for the probe's period; kept in, they get what the gateway answers while Kafka is
away: 503 with ``Retry-After`` once a publish times out, or 200 once it is back."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)


class ReadinessGrace:
    """Tracks how long the Kafka checks have been failing.

    Args:
        grace_seconds: how long failures are tolerated before they count.
        clock: monotonic seconds.
    """

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = grace_seconds
        self._clock = clock
        self._failing_since: float | None = None

    def judge(self, failure: str | None) -> str | None:
        """The failure to answer 503 with (None: ready), given the latest check's."""
        now = self._clock()
        if failure is None:
            self._failing_since = None
            return None
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        if failing_for >= self._grace:
            return f"{failure} (failing for {failing_for:.0f} s)"
        logger.info("kafka check failed, still ready within the grace detail=%s", failure)
        return None

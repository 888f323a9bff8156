"""Stopping in bounded time when a server is gone or paused."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)


def close_within(close: Callable[[], object], seconds: float, what: str) -> bool:
    """Call ``close`` in a daemon thread and wait at most ``seconds``; whether it returned.

    For clients whose close talks to their server: pymongo's ``MongoClient.close`` ends its
    pooled sessions and waits a whole server-selection timeout (30 s) for a mongod that is
    gone or paused. Nothing is lost by not waiting: those sessions expire on the server.
    """
    closer = threading.Thread(target=close, name=f"close-{what}", daemon=True)
    closer.start()
    closer.join(seconds)
    if closer.is_alive():
        logger.warning("client did not close in time client=%s seconds=%s", what, seconds)
        return False
    return True

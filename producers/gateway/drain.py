"""Whether this gateway process is draining: set on SIGTERM or SIGINT by the server
(server.py), read by ``/ready``, which then answers 503 so that load balancers stop
sending here before the process stops listening."""

from __future__ import annotations

import threading

_draining = threading.Event()


def begin_drain() -> None:
    """Safe in a signal handler: it only sets a flag."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()

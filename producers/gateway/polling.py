"""Waiting, in a request, for what the stream workers write to MongoDB."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

_T = TypeVar("_T")


async def poll(find: Callable[[], _T | None], deadline: float, interval: float) -> _T | None:
    """Call ``find`` (blocking, in a thread) every ``interval`` seconds until it returns
    something or the monotonic ``deadline`` passes."""
    while True:
        found = await asyncio.to_thread(find)
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(interval)

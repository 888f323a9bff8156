"""Two corrections to faust-streaming (0.15) that the pipeline's guarantees rest on.

Both were found by killing a worker during a release and restarting it: the batch then
missed a partition, because a click or a release marker was never processed although
its offset was committed.

1. Faust remembers the last offset read from each partition, drops fetched messages
   below it and treats offsets skipped above it as a gap it may commit past (meant for
   compacted topics and transaction markers). After a restart or a rebalance, a fetch
   racing the seek to the committed offsets leaves that offset wrong: messages are then
   dropped for good (a partition stalls) or skipped (and their offset committed).
   The source topics here have contiguous offsets (no compaction, no transactions) and
   every handler is idempotent, so the stream takes every message it fetches, repeats
   included, and commits only what it has processed.

2. Before committing offsets, faust flushes its producer buffer (table changelogs), but
   gives up as soon as no message leaves the buffer for 0.1 s, so a busy worker can
   commit offsets whose table changes are still only in memory. Here the flush waits
   until the buffer is empty.

3. When the agent's buffer fills, faust stops fetching the partition that filled it and
   resumes it from a callback of that buffer once it drains. A worker restarted after a
   crash replays thousands of messages at once; in about one restart of five a partition
   was never resumed, and the release waiting on its marker never completed. The worker
   has one agent, so every partition feeds the same buffer and pausing one buys nothing:
   here a full buffer makes the fetcher wait on it instead (faust's own put blocks), a
   backpressure that keeps no state to lose.

4. aiokafka's fetcher sends its next fetch as soon as the last one is answered, relying
   on the broker to hold a fetch until data arrives (fetch.max.wait.ms). A broker that
   answers empty fetches at once (the local one does: 4,200 fetches/s at an idle
   position) makes that a busy loop in the consumer thread, which took the interpreter
   from the agent: 13,540 fetches for 16,000 messages. Here a fetch that brought no
   records waits a moment before the next; against Apache Kafka an empty answer comes
   only after the broker's own wait, so the pause costs nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from faust.transport.producer import ProducerBuffer
    from faust.types import ConsumerT, ProducerT

logger = logging.getLogger(__name__)


class _NoReadOffsets(dict[Any, Any]):
    """A read-offset map that never holds an offset: nothing is dropped, no gap is assumed."""

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def take_every_fetched_message(consumer: ConsumerT) -> ConsumerT:
    consumer._read_offset = _NoReadOffsets()  # type: ignore[attr-defined]
    return consumer


def never_pause_on_full_buffer(consumer: ConsumerT) -> ConsumerT:
    def keep_fetching(tp: Any) -> None:
        pass

    consumer.on_buffer_full = keep_fetching  # type: ignore[method-assign]
    return consumer


def flush_buffer_completely(producer: ProducerT) -> ProducerT:
    buffer = cast("ProducerBuffer", producer.buffer)

    async def flush() -> None:
        waited = 0
        while buffer.size:
            if not await buffer.flush_atmost(None):
                waited += 1
                if waited % 50 == 0:  # every ~5 s without progress
                    logger.warning("changelog flush waiting pending=%s", buffer.size)
            else:
                waited = 0

    buffer.flush = flush  # type: ignore[method-assign]
    return producer


def back_off_empty_fetches(seconds: float) -> None:
    """Make every aiokafka fetcher of this process wait ``seconds`` after a fetch that
    brought no records (``CLICKSTREAM_WORKER_EMPTY_FETCH_BACKOFF_SECONDS``)."""
    from aiokafka.consumer.fetcher import Fetcher  # noqa: PLC0415

    if getattr(Fetcher, "clickstream_backs_off", False):
        return
    original = Fetcher._proc_fetch_request

    async def proc_fetch_request(self: Fetcher, *args: Any) -> bool:
        try:
            got_records: bool = await original(self, *args)
        except asyncio.CancelledError:
            # aiokafka ends a cancelled fetch quietly while it sends, but not while it backs
            # off after a failed send (broker gone): close() then raises CancelledError out
            # of the consumer thread, which never reports its shutdown, and SIGTERM takes
            # the thread's 60 s shutdown timeout.
            return False
        if not got_records:
            # As aiokafka's own method does: a fetch cancelled by close() or by losing the
            # partition ends quietly, or close() stops half-way and the worker hangs.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(seconds)
        return got_records

    Fetcher._proc_fetch_request = proc_fetch_request
    Fetcher.clickstream_backs_off = True


def bound_leave_group(seconds: float) -> None:
    """Give up leaving the consumer group after ``seconds``: aiokafka waits a whole request
    timeout (90 s in faust) for a broker that is paused or unreachable. The leave is a
    courtesy (partitions move at once); without it they move when the session expires."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator  # noqa: PLC0415

    if getattr(GroupCoordinator, "clickstream_bounds_leave", False):
        return
    original = GroupCoordinator._maybe_leave_group

    async def maybe_leave_group(self: GroupCoordinator) -> None:
        try:
            await asyncio.wait_for(original(self), seconds)
        except TimeoutError:
            logger.warning("leaving the consumer group timed out seconds=%s", seconds)
            self.reset_generation()

    GroupCoordinator._maybe_leave_group = maybe_leave_group
    GroupCoordinator.clickstream_bounds_leave = True

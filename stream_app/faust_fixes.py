"""Corrections to faust-streaming and aiokafka that the pipeline's guarantees rest on.

They replace internals, so they hold only for the code they were written for:
``pyproject.toml`` pins faust-streaming, mode-streaming and aiokafka exactly, and
:func:`check_faust_internals` (run by ``create_app``) compares a hash of the source of
every replaced or relied-upon function with the one recorded here, and stops the worker
with :class:`FaustInternalsChangedError` otherwise. After an upgrade: read the new code
of each function named in the error, adapt the fix (or drop it if upstream fixed it),
then record the new hashes (``python -m stream_app.faust_fixes`` prints them).

Three of the fixes are subclasses installed through :class:`FixedTransport` (faust's own
extension point: a transport names its consumer and producer classes); the empty-fetch
backoff and the bounded leave must patch aiokafka's ``Fetcher`` and ``GroupCoordinator``
classes, which aiokafka builds inside its consumer's ``start()``.

1. Faust remembers the last offset read from each partition, drops fetched messages
   below it and treats offsets skipped above it as a gap it may commit past (meant for
   compacted topics and transaction markers). After a restart or a rebalance, a fetch
   racing the seek to the committed offsets leaves that offset wrong: messages are then
   dropped for good (a partition stalls) or skipped (and their offset committed).
   Upstream: faust-streaming/faust#216, #221 and #606 (open), robinhood/faust#115.
   The source topics here have contiguous offsets (no compaction, no transactions) and
   every handler is idempotent, so the stream takes every message it fetches, repeats
   included, and commits only what it has processed.

2. Before committing offsets, faust flushes its producer buffer (table changelogs), but
   ``ProducerBuffer.flush_atmost`` gives up as soon as no message leaves the buffer for
   0.1 s, so a busy worker can commit offsets whose table changes are still only in
   memory. Upstream added the flush before commit (faust-streaming/faust#273) but not
   the wait; #173 (open) reports the slow buffer. Here the flush waits until the buffer
   is empty.

3. When the agent's buffer fills, faust stops fetching the partition that filled it and
   resumes it from a callback of that buffer once it drains. A worker restarted after a
   crash replays thousands of messages at once; in about one restart of five a partition
   was never resumed, and the release waiting on its marker never completed. Upstream:
   faust-streaming/faust#88, #237 (races fixed there, this one remains) and #74. The
   worker has one agent, so every partition feeds the same buffer and pausing one buys
   nothing: here a full buffer makes the fetcher wait on it instead (faust's own put
   blocks), a backpressure that keeps no state to lose.

4. aiokafka's fetcher sends its next fetch as soon as the last one is answered, relying
   on the broker to hold a fetch until data arrives (fetch.max.wait.ms). A broker that
   answers empty fetches at once (the local one does: 4,200 fetches/s at an idle
   position) makes that a busy loop in the consumer thread, which took the interpreter
   from the agent: 13,540 fetches for 16,000 messages. No upstream report found for
   aiokafka (the same loop in other clients: dpkp/kafka-python#813, apache/kafka#3127).
   Here a fetch that brought no records waits a moment before the next; against Apache
   Kafka an empty answer comes only after the broker's own wait, so the pause costs
   nothing there.

Relied upon, not replaced: retention asks :func:`committed_offset` what the group has
committed (faust's ``Consumer._committed_offset``), so a session leaves the tables only
once no restart can read it again.

5. (``StreamApp.on_stop``) aiokafka's coordinator sends LeaveGroup only for dynamic
   members (``GroupCoordinator._maybe_leave_group``); the worker clears its instance id
   before stopping, so a clean stop hands its partitions over at once (Kafka Streams'
   ``close(leaveGroup=true)``, apache/kafka#12035). Leaving waits at most 1.5 s
   (:func:`bound_leave_group`): aiokafka would wait a whole request timeout (90 s) for a
   paused broker. And a fetch cancelled while it backs off from a gone broker ends quietly
   (fix 4's wrapper), or the consumer thread never reports its stop (60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import logging
from typing import TYPE_CHECKING, Any, cast

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.exceptions import FaustInternalsChangedError

if TYPE_CHECKING:
    import faust
    from faust.transport.producer import ProducerBuffer
    from faust.types import TP

logger = logging.getLogger(__name__)

#: The versions the fixes were written for; pyproject.toml pins the same.
PINNED_VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}

#: For each fix, the code it replaces or relies on: "module:qualname" -> first 16 hex
#: digits of the sha256 of ``inspect.getsource``.
FINGERPRINTS: dict[str, dict[str, str]] = {
    "take every fetched message": {
        "faust.transport.consumer:Consumer.__init__": "302410d59e6972d1",
        "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
        "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0afd8",
        "faust.transport.consumer:Consumer.seek": "b86a9fe05f956b30",
        "faust.transport.consumer:Consumer.on_partitions_revoked": "d04b7ae72c6fc206",
    },
    "flush the producer buffer completely": {
        "faust.transport.producer:ProducerBuffer.flush": "26fbebb124ad9c98",
        "faust.transport.producer:ProducerBuffer.flush_atmost": "4966e8c5f9b42eb9",
        "faust.transport.drivers.aiokafka:Producer.flush": "36d0cb3615f65b01",
    },
    "never pause a partition on a full buffer": {
        "faust.transport.consumer:Consumer.on_buffer_full": "c8961679e0bcdce5",
        "faust.transport.consumer:Consumer.on_buffer_drop": "4b57e8a418d5ad9c",
        "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
    },
    "back off after empty fetches": {
        "aiokafka.consumer.fetcher:Fetcher._proc_fetch_request": "59bf948fff47eed5",
        "aiokafka.consumer.fetcher:Fetcher._fetch_requests_routine": "2a8ec5932644c9b0",
    },
    "committed offsets for retention": {
        # Consumer._committed_offset: filled from the group's offsets when faust seeks to
        # them on assignment, then on every commit of this worker.
        "faust.transport.consumer:Consumer.__init__": "302410d59e6972d1",
        "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0afd8",
        "faust.transport.consumer:Consumer._commit_offsets": "1a69799041188441",
    },
    "leave the group on a clean stop": {
        "aiokafka.consumer.group_coordinator:GroupCoordinator._maybe_leave_group": (
            "016cd88a16e6c4b5"
        ),
        "aiokafka.consumer.group_coordinator:GroupCoordinator.close": "f30d831089456312",
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.on_thread_stop": (
            "8dfc004e258b6c25"
        ),
        # Where the objects StreamApp.on_stop reaches (_thread._consumer._coordinator) are made.
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.on_start": "38b4e8bd1e10723a",
        "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "2f1ba70443327538",
    },
}


def _resolve(target: str) -> Any:
    module_name, qualname = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    # A function this module patched: fingerprint what it replaced.
    return inspect.unwrap(obj)


def fingerprint(target: str) -> str:
    """The fingerprint of ``module:qualname`` as installed now."""
    source = inspect.getsource(_resolve(target))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def check_faust_internals(
    fingerprints: dict[str, dict[str, str]] | None = None,
    versions: dict[str, str] | None = None,
) -> None:
    """Raise :class:`FaustInternalsChangedError` naming every fix whose replaced code is
    not the one it was written for."""
    problems = [
        f"{package} {installed} is installed, the fixes were written for {wanted}"
        for package, wanted in (versions or PINNED_VERSIONS).items()
        if (installed := importlib.metadata.version(package)) != wanted
    ]
    for fix, targets in (fingerprints or FINGERPRINTS).items():
        for target, expected in targets.items():
            try:
                found = fingerprint(target)
            except (ImportError, AttributeError, OSError, TypeError) as exc:
                problems.append(f"fix '{fix}': {target} not found ({exc})")
                continue
            if found != expected:
                problems.append(f"fix '{fix}': {target} changed ({expected} -> {found})")
    if problems:
        raise FaustInternalsChangedError(
            "stream_app/faust_fixes.py replaces faust/aiokafka internals that are not the "
            "code it was written for; review each fix against the new code before running "
            "a worker:\n  " + "\n  ".join(problems)
        )


class _NoReadOffsets(dict[Any, Any]):
    """A read-offset map that never holds an offset: nothing is dropped, no gap is assumed."""

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


class FixedConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with fixes 1 and 3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _NoReadOffsets()  # fix 1

    def on_buffer_full(self, tp: TP) -> None:
        """Fix 3: keep fetching; the full buffer itself holds the fetcher back."""


async def flush_completely(buffer: ProducerBuffer) -> None:
    """Wait until ``buffer`` is empty, however long each message takes to leave it."""
    waited = 0
    while buffer.size:
        if await buffer.flush_atmost(None):
            waited = 0
            continue
        waited += 1
        if waited % 50 == 0:  # every ~5 s without progress
            logger.warning("changelog flush waiting pending=%s", buffer.size)


class FixedProducer(faust_aiokafka.Producer):
    """faust's aiokafka producer with fix 2: the flush before a commit empties the buffer."""

    async def flush(self) -> None:
        await flush_completely(cast("ProducerBuffer", self.buffer))
        await super().flush()


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """The offset committed for ``tp`` (the next one a restarted worker reads), as this
    worker's consumer knows it: the group's when its partitions were assigned, then each of
    its own commits; None before either. Faust keeps it in ``Consumer._committed_offset``
    (its monitor only sees this worker's own commits, so a partition idle since a restart
    would have none)."""
    offsets = cast("dict[TP, int | None]", app.consumer._committed_offset)  # type: ignore[attr-defined]
    return offsets.get(tp)


class FixedTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, with the fixed consumer and producer."""

    Consumer = FixedConsumer
    Producer = FixedProducer


def back_off_empty_fetches(seconds: float) -> None:
    """Fix 4: make every aiokafka fetcher of this process wait ``seconds`` after a fetch
    that brought no records (``CLICKSTREAM_WORKER_EMPTY_FETCH_BACKOFF_SECONDS``)."""
    from aiokafka.consumer.fetcher import Fetcher  # noqa: PLC0415

    if getattr(Fetcher, "clickstream_backs_off", False):
        return
    original = Fetcher._proc_fetch_request

    @functools.wraps(original)
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
    """Part of fix 5: give up leaving the consumer group after ``seconds``. aiokafka waits
    a whole request timeout (90 s in faust) for a broker that is paused or unreachable; the
    leave is a courtesy (partitions move at once), without it they move when the session
    expires."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator  # noqa: PLC0415

    if getattr(GroupCoordinator, "clickstream_bounds_leave", False):
        return
    original = GroupCoordinator._maybe_leave_group

    @functools.wraps(original)
    async def maybe_leave_group(self: GroupCoordinator) -> None:
        try:
            await asyncio.wait_for(original(self), seconds)
        except TimeoutError:
            logger.warning("leaving the consumer group timed out seconds=%s", seconds)
            self.reset_generation()

    GroupCoordinator._maybe_leave_group = maybe_leave_group
    GroupCoordinator.clickstream_bounds_leave = True


if __name__ == "__main__":
    for fix_targets in FINGERPRINTS.values():
        for name in fix_targets:
            print(f'"{name}": "{fingerprint(name)}",')  # noqa: T201

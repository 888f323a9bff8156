"""The corrections of stream_app/faust_fixes.py: each one checked at start-up, each one
shown to change what faust or aiokafka would do without it.

Fix 5 (a clean stop leaves the group) is shown by test_recovery's
``test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops``: the
local broker never expires a session, so without it the stopped worker's partitions never
move and that test times out.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import types
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from batches.store import BatchStore
from clickstream.exceptions import ClickstreamError
from stream_app import faust_fixes
from stream_app.app import StreamApp, create_app
from stream_app.exceptions import FaustInternalsChangedError
from stream_app.faust_fixes import (
    FixedConsumer,
    FixedProducer,
    back_off_empty_fetches,
    check_faust_internals,
)
from tests.servers import LocalBroker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from clickstream.settings import Settings

pytestmark = pytest.mark.anyio


# --- the start-up check -------------------------------------------------------------


def test_the_installed_faust_and_aiokafka_are_the_ones_the_fixes_were_written_for() -> None:
    check_faust_internals()


def test_a_replaced_function_that_changed_stops_create_app(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def on_buffer_full(self: Any, tp: Any) -> None:  # an "upgraded" faust
        self._buffered_partitions.add(tp)

    monkeypatch.setattr(faust.transport.consumer.Consumer, "on_buffer_full", on_buffer_full)
    store = BatchStore.from_settings(settings)
    try:
        with pytest.raises(FaustInternalsChangedError) as raised:
            create_app(settings, store)
    finally:
        store.close()
    assert isinstance(raised.value, ClickstreamError)
    message = str(raised.value)
    assert "fix 'never pause a partition on a full buffer'" in message
    assert (
        "faust.transport.consumer:Consumer.on_buffer_full changed (c8961679e0bcdce5 ->" in message
    )


def test_another_version_or_a_missing_function_is_named() -> None:
    with pytest.raises(FaustInternalsChangedError) as raised:
        check_faust_internals(
            {"a fix": {"aiokafka.consumer.fetcher:Fetcher._gone": "0" * 16}},
            {"aiokafka": "0.13.0"},
        )
    message = str(raised.value)
    assert "aiokafka 0.14.0 is installed, the fixes were written for 0.13.0" in message
    assert "fix 'a fix': aiokafka.consumer.fetcher:Fetcher._gone not found" in message


def test_the_patched_fetcher_is_checked_by_the_code_it_replaced() -> None:
    back_off_empty_fetches(0.005)
    assert (
        faust_fixes.fingerprint("aiokafka.consumer.fetcher:Fetcher._proc_fetch_request")
        == (
            faust_fixes.FINGERPRINTS["back off after empty fetches"][
                "aiokafka.consumer.fetcher:Fetcher._proc_fetch_request"
            ]
        )
    )


# --- fix 4: empty fetches back off ----------------------------------------------------


async def _fetches_on_an_idle_partition(
    settings: Settings, proc_fetch_request: Callable[..., Any], seconds: float
) -> int:
    """Fetch requests an aiokafka consumer sends in ``seconds`` at the end of a partition
    nothing is written to."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topic = f"{settings.topic_prefix}ingest"
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_end(TopicPartition(topic, 0))
        fetcher = consumer._fetcher
        count = 0

        async def counted(*args: Any) -> bool:
            nonlocal count
            count += 1
            result: bool = await proc_fetch_request(fetcher, *args)
            return result

        # The routine looks the method up on every fetch: the instance attribute wins.
        fetcher._proc_fetch_request = counted
        await asyncio.sleep(seconds)  # the idle time being measured, not a wait for state
        return count
    finally:
        await consumer.stop()


async def test_a_fetch_that_brought_nothing_waits_before_the_next(settings: Settings) -> None:
    back_off_empty_fetches(settings.worker_empty_fetch_backoff_seconds)
    patched = Fetcher._proc_fetch_request
    unpatched = inspect.unwrap(patched)
    # 0.005 s (the default) bounds an idle partition to 200 fetches/s; without the fix
    # the local broker answers empty fetches at once (thousands per second).
    with_fix = await _fetches_on_an_idle_partition(settings, patched, 2.0)
    without_fix = await _fetches_on_an_idle_partition(settings, unpatched, 2.0)
    assert 0 < with_fix <= 2.0 / settings.worker_empty_fetch_backoff_seconds, (
        f"{with_fix} fetches in 2 s ({without_fix} without the backoff)"
    )
    assert without_fix > 2 * with_fix, "the local broker answers empty fetches at once"


# --- fix 2: the flush before a commit empties the producer buffer ---------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own: it is paused (SIGSTOP), which no other test may see."""
    broker = LocalBroker(tmp_path).start()
    try:
        yield broker
    finally:
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()


@pytest.fixture
async def app_on_own_broker(own_broker: LocalBroker) -> AsyncIterator[StreamApp]:
    app = StreamApp(f"fixes-{uuid.uuid4().hex[:8]}", broker=f"kafka://{own_broker.bootstrap}")
    await app.producer.start()
    try:
        yield app
    finally:
        await app.producer.stop()


async def test_the_flush_before_a_commit_waits_until_the_buffer_is_empty(
    own_broker: LocalBroker, app_on_own_broker: StreamApp
) -> None:
    app = app_on_own_broker
    producer = app.producer
    assert isinstance(producer, FixedProducer)
    topic = app.topic(f"changelog-{uuid.uuid4().hex[:8]}", key_serializer="raw")
    assert own_broker.pid is not None
    # Paused, the broker cannot tell where the new topic lives: the first message waits
    # inside aiokafka's send, the others in faust's buffer (table changes to flush).
    os.kill(own_broker.pid, signal.SIGSTOP)
    for number in range(5):
        producer.send_soon(topic.as_future_message(key=b"k", value=b"%d" % number))
    flush = asyncio.ensure_future(producer.flush())
    # faust's own flush returns after 0.1 s without a message leaving the buffer.
    done, _ = await asyncio.wait([flush], timeout=1.0)
    assert not done, f"flush returned with {producer.buffer.size} messages in the buffer"
    assert producer.buffer.size == 4

    os.kill(own_broker.pid, signal.SIGCONT)
    await asyncio.wait_for(flush, timeout=60)
    assert producer.buffer.size == 0


# --- fixes 1 and 3, on the consumer ----------------------------------------------------


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> FixedConsumer:
    """The consumer a worker's app builds (not started: its methods are what is tested)."""
    app = StreamApp(f"fixes-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}")
    built = app.consumer
    assert isinstance(built, FixedConsumer)
    return built


async def _drained_offsets(consumer: FixedConsumer, fetched: list[int]) -> list[int]:
    """Offsets faust's own fetch loop (``Consumer._drain_messages``) hands to the stream
    when the fetcher returns messages at ``fetched`` offsets of one partition."""
    tp = TP("source", 0)
    handed: list[int] = []

    async def getmany(**kwargs: Any) -> AsyncIterator[tuple[TP, Any]]:
        for offset in fetched:
            yield tp, types.SimpleNamespace(offset=offset, topic=tp.topic, key=b"", value=b"")
        stopped.set()

    async def callback(message: Any) -> None:
        handed.append(message.offset)

    stopped = asyncio.Event()
    consumer.getmany = getmany  # type: ignore[method-assign,assignment]
    consumer.callback = callback
    fetcher = types.SimpleNamespace(_stopped=stopped)
    await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=30)  # type: ignore[arg-type]
    return handed


async def test_messages_fetched_again_after_a_seek_back_are_all_handed_on(
    consumer: FixedConsumer,
) -> None:
    # A fetch racing the seek to the committed offset (3): 5 and 6 come first, then 3
    # and 4 again. faust drops 3, 4 and 5 (below its read offset, 6) for good: had 3 and 4
    # not been processed before, they never reach the tables, yet offset 7 is committed.
    fetched = [5, 6, 3, 4, 5, 6]
    assert await _drained_offsets(consumer, fetched) == fetched

    consumer._read_offset = defaultdict(lambda: None)  # faust's own map: without the fix
    assert await _drained_offsets(consumer, fetched) == [5, 6, 6]


async def test_a_full_buffer_never_takes_a_partition_out_of_the_fetch(
    consumer: FixedConsumer,
) -> None:
    tp = TP("source", 0)
    consumer._set_active_tps({tp})
    consumer.on_buffer_full(tp)
    assert tp in consumer._get_active_partitions()
    assert not consumer._buffered_partitions

    # faust's own: the partition waits for a callback of the buffer to be fetched again.
    faust_aiokafka.Consumer.on_buffer_full(consumer, tp)
    assert tp not in consumer._get_active_partitions()

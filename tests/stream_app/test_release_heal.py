"""Releases heal: a batch left releasing because some partitions never wrote their part
gets its markers again on those partitions, and completes with exactly their sessions."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import pytest
from bson import ObjectId

from batches.store import BatchStore
from clickstream.clock import now_ms
from consumers.batch_reader import BatchReader
from producers.grouping import partition_of
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from clickstream.settings import Settings
    from tests.utils.pipeline import Pipeline

HEAL_SECONDS = 1.0
_ZERO = dict.fromkeys(
    ("session_count", "event_count", "repeat_session_count", "deferred_session_count"), 0
)


@pytest.fixture
def stream_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(tick_interval_seconds=0.5, release_heal_seconds=HEAL_SECONDS)


@pytest.fixture
def store(stream_settings: Settings) -> Iterator[BatchStore]:
    assert stream_settings.mongodb_url
    store = BatchStore.from_settings(stream_settings)
    yield store
    store.close()


def test_a_batch_whose_markers_were_lost_on_some_partitions_heals(
    pipeline: Pipeline, store: BatchStore
) -> None:
    sessions = [session_body() for _ in range(18)]
    for session in sessions:
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body()])
    # Where each session is, from the producers' partitioner: not read back from the
    # topic, which the worker purges of what it handled (every second in the tests).
    by_partition: dict[int, set[str]] = defaultdict(set)
    for session in sessions:
        session_id = session["session_id"]
        by_partition[partition_of(session_id, pipeline.settings.topic_partitions)].add(session_id)
    assert len(by_partition) >= 2, "sessions spread over partitions"
    lost = set(sorted(by_partition)[:2])
    # What a lost marker leaves: the batch opened, every other partition reported its
    # part (none of their sessions in it), these two never did.
    batch_id, release_id, request_id = ObjectId(), new_id(), new_id()
    stalled_since_ms = now_ms() - 10_000
    store.open_release(
        batch_id=batch_id,
        release_id=release_id,
        request_id=request_id,
        min_idle_seconds=0,
        requested_at_ms=stalled_since_ms,
        partition_count=pipeline.settings.topic_partitions,
    )
    store.batches.update_one({"_id": batch_id}, {"$set": {"markers_sent_at_ms": stalled_since_ms}})
    for partition in range(pipeline.settings.topic_partitions):
        if partition not in lost:
            store.record_partition(batch_id, partition, _ZERO, offset=-1)

    waiting = pipeline.batch(str(batch_id)).json()
    assert set(waiting["waiting_partitions"]) <= lost
    assert set(waiting["done_partitions"]) >= set(range(6)) - lost

    healed = eventually(
        lambda: (answer := pipeline.batch(str(batch_id)).json())["status"] == "released" and answer,
        timeout=60,
    )
    expected = set().union(*(by_partition[p] for p in lost))
    assert healed["done_partitions"] == list(range(6))
    assert healed["waiting_partitions"] == []
    assert healed["heal_count"] >= 1
    assert (healed["session_count"], healed["event_count"]) == (len(expected), len(expected))
    released = pipeline.batch_sessions(str(batch_id))
    assert len(released) == len(expected)
    assert {s["session_id"] for s in released} == expected
    with BatchReader(pipeline.settings) as batches:
        answer = batches.wait_for_release(release_id, request_id=request_id, timeout=30)
    assert (answer.batch_id, answer.request_ids) == (str(batch_id), (request_id,))

    rest = pipeline.release(new_id()).json()
    assert rest["status"] == "released"
    assert {s["session_id"] for s in pipeline.batch_sessions(rest["batch_id"])} == {
        s["session_id"] for s in sessions
    } - expected, "the other partitions' sessions go in the next release, once"

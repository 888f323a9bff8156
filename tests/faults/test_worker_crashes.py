"""Workers SIGKILLed under load and in the middle of releases: every click answered 2xx is
released exactly once, nothing lost, nothing doubled."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from clickstream.credentials import internal_auth_headers
from schemas import Topics
from tests.utils.bulk import publish_sessions
from tests.utils.clients import Clients, assert_exactly_once, released_batches
from tests.utils.kafka import TopicReader
from tests.utils.payloads import new_id
from tests.utils.pipeline import RELEASE_URL, eventually, wait_until_both_have_partitions

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from deploy.local.servers import LocalGateway
    from schemas import AvroCodec
    from tests.utils.clients import Acknowledged
    from tests.utils.pipeline import Worker


def _release(gateway_url: str, settings: Settings) -> dict[str, object]:
    """Release through the gateway and wait until the batch is complete."""
    answer = httpx.post(
        f"{gateway_url}{RELEASE_URL}",
        json={"release_id": new_id()},
        headers=internal_auth_headers(settings),
        timeout=120,
    )
    assert answer.status_code in (200, 202), answer.text
    return _wait_released(gateway_url, settings, answer.json()["batch_id"])


def _wait_released(gateway_url: str, settings: Settings, batch_id: str) -> dict[str, object]:
    def released() -> dict[str, object] | None:
        batch = httpx.get(
            f"{gateway_url}/api/v1/clickstream/internal/batch",
            params={"batch_id": batch_id},
            headers=internal_auth_headers(settings),
            timeout=30,
        ).json()
        return batch if batch["status"] == "released" else None

    return eventually(released, timeout=180)  # type: ignore[no-any-return]


def _release_last_and_count(
    gateway_url: str,
    settings: Settings,
    batches: list[dict[str, object]],
    acknowledged: Acknowledged,
) -> tuple[dict[str, list[dict[str, Any]]], Counter[tuple[str, str]]]:
    """Release what is left, then count: the batches in MongoDB are those released, and
    every acknowledged click is in exactly one of them as new."""
    batches.append(_release(gateway_url, settings))
    stored = released_batches(settings)
    assert set(stored) == {b["batch_id"] for b in batches}
    return stored, assert_exactly_once(acknowledged, stored.values())


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_a_worker_killed_twice_under_load_releases_every_click_once(
    stream_settings: Settings,
    worker_factory: Callable[..., Worker],
    gateway_factory: Callable[..., LocalGateway],
    store: str,
) -> None:
    """Killed mid-write, a worker comes back with exactly the state its last committed
    batch left: from its RocksDB state on disk and the changelog's tail, or (memory) from
    the whole changelog."""
    stream_settings = stream_settings.model_copy(update={"worker_store": store})
    worker = worker_factory(stream_settings).start()
    gateway = gateway_factory(stream_settings, [worker])
    batches = []
    with Clients(gateway.address, count=4, events_per_request=5, pause_seconds=0.005) as clients:
        for round_ in range(2):
            clients.wait_for_events(1500 * (round_ + 1))
            worker.kill()
            worker = worker_factory(stream_settings, restarting=worker).start()
            if round_ == 0:  # a release between the crashes, while the clients go on
                batches.append(_release(gateway.address, stream_settings))
        clients.wait_for_events(clients.acknowledged.event_count() + 1000)
    acknowledged = clients.stop()
    stored, counted = _release_last_and_count(
        gateway.address, stream_settings, batches, acknowledged
    )
    assert acknowledged.event_count() >= 4000
    assert sum(b["event_count"] for b in batches) >= len(counted), "repeats carry old clicks too"
    released_sessions = {s["session_id"] for sessions in stored.values() for s in sessions}
    assert acknowledged.sessions <= released_sessions, "every acknowledged session released"


def test_one_of_two_workers_killed_in_the_middle_of_a_release(
    stream_settings: Settings,
    worker_factory: Callable[..., Worker],
    gateway_factory: Callable[..., LocalGateway],
    codec: AvroCodec,
) -> None:
    first = worker_factory(stream_settings).start()
    second = worker_factory(stream_settings).start()

    wait_until_both_have_partitions(first, second)
    ids = publish_sessions(stream_settings, sessions=6000, events_each=2)
    gateway = gateway_factory(
        stream_settings, [first, second], CLICKSTREAM_RELEASE_WAIT_SECONDS="0.2"
    )
    headers = internal_auth_headers(stream_settings)
    accepted = httpx.post(
        f"{gateway.address}{RELEASE_URL}", json={"release_id": new_id()}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    second.kill()

    restarted = worker_factory(stream_settings, restarting=second).start()

    _wait_released(gateway.address, stream_settings, batch_id)
    [sessions] = released_batches(stream_settings).values()
    counted = Counter(s["session_id"] for s in sessions)
    assert set(counted) == set(ids), "no session missing"
    assert max(counted.values()) == 1, "no session doubled"
    assert all(s["event_count"] == 2 for s in sessions)
    reader = TopicReader(stream_settings.kafka_common_config(), codec)
    batches_topic = Topics(stream_settings.topic_prefix).batches
    # The batch is marked released in MongoDB before its announcement's transaction commits.
    announced = eventually(
        lambda: [m for m in reader.read(batches_topic) if m.name.endswith("BatchReleased")] or None,
        timeout=30,
    )
    assert [m.record["batch_id"] for m in announced] == [batch_id], "announced once"
    assert restarted.pid is not None


def test_sessions_retired_before_a_kill_are_not_released_again(
    stream_settings: Settings,
    worker_factory: Callable[..., Worker],
    gateway_factory: Callable[..., LocalGateway],
) -> None:
    # Released sessions leave the tables a second after their last click; a kill then makes
    # the worker replay what follows its committed offsets. A retired session whose events
    # were read again would come back as new.
    stream_settings = stream_settings.model_copy(update={"session_retention_seconds": 1.0})
    worker = worker_factory(stream_settings).start()
    gateway = gateway_factory(stream_settings, [worker])
    batches = []
    with Clients(gateway.address, count=4, events_per_request=5, pause_seconds=0.005) as clients:
        clients.wait_for_events(1500)
        batches.append(_release(gateway.address, stream_settings))
        eventually(lambda: "retired=" in worker.log(), timeout=60)
        worker.kill()  # at once: the replay then reaches back before sessions retired
        worker = worker_factory(stream_settings, restarting=worker).start()
        clients.wait_for_events(clients.acknowledged.event_count() + 1000)
        batches.append(_release(gateway.address, stream_settings))
        clients.wait_for_events(clients.acknowledged.event_count() + 500)
    acknowledged = clients.stop()
    _release_last_and_count(gateway.address, stream_settings, batches, acknowledged)

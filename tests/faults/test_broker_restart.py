"""The broker stopped and started again under load from several clients: every event
answered 2xx is released exactly once, none twice, none lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.servers import new_broker
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import (
    EVENTS_URL,
    SESSION_URL,
    Pipeline,
    eventually,
    gateway_client,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fastapi.testclient import TestClient

    from clickstream.settings import Settings
    from tests.servers import Broker
    from tests.utils.pipeline import Worker

CLIENTS = 4
EVENTS_PER_REQUEST = 5
REQUESTS_PER_SESSION = 8
LOAD_SECONDS = 20.0
MAX_EVENTS = 4000
# Each client's pause between requests: about 200 events/s in all, so the load spans the
# broker's restart.
PACE_SECONDS = 0.1
# How long a client keeps retrying one request before the test gives up on it.
RETRY_SECONDS = 120.0


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test alone, since the test stops it."""
    broker = new_broker(tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.close()


class Budget:
    """How many events the clients may still send, shared by their threads."""

    def __init__(self, events: int) -> None:
        self._left = events
        self._spent = 0
        self._lock = threading.Lock()

    def left(self) -> bool:
        with self._lock:
            return self._left > 0

    def spend(self, events: int) -> None:
        with self._lock:
            self._left -= events
            self._spent += events

    def spent(self) -> int:
        with self._lock:
            return self._spent


class Client:
    """Registers sessions and adds their events, retrying 503s and connection errors with
    the same body (ids make retries safe), as a real client would."""

    def __init__(self, gateway: TestClient, stop: threading.Event, budget: Budget) -> None:
        self._gateway = gateway
        self._stop = stop
        self._budget = budget
        self.accepted: dict[str, list[str]] = {}
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stop.is_set() and self._budget.left():
                session = session_body()
                self._post(SESSION_URL, session)
                self.accepted[session["session_id"]] = []
                for _ in range(REQUESTS_PER_SESSION):
                    if self._stop.is_set() or not self._budget.left():
                        break
                    events = [event_body() for _ in range(EVENTS_PER_REQUEST)]
                    body = {"session_id": session["session_id"], "events": events}
                    self._post(EVENTS_URL, body)
                    self.accepted[session["session_id"]].extend(e["event_id"] for e in events)
                    self._budget.spend(len(events))
                    time.sleep(PACE_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _post(self, url: str, body: dict[str, Any]) -> None:
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                response = self._gateway.post(url, json=body)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                return
            if response is not None:
                assert response.status_code == 503, response.text
                delay = float(response.headers["Retry-After"])
            else:
                delay = 1.0
            assert time.monotonic() < deadline, f"no 200 for {url} in {RETRY_SECONDS} s"
            self.retries += 1
            time.sleep(min(delay, 1.0))


def test_broker_restart_under_load_releases_every_accepted_event_once(
    own_broker: Broker,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
) -> None:
    settings = settings_factory(
        kafka_bootstrap=own_broker.bootstrap,
        tick_interval_seconds=0.5,
        publish_timeout_seconds=3.0,
        retry_after_seconds=1,
    )
    worker = worker_factory(settings).start()
    stop = threading.Event()
    with gateway_client(settings, [worker]) as gateway:
        budget = Budget(MAX_EVENTS)
        clients = [Client(gateway, stop, budget) for _ in range(CLIENTS)]
        threads = [threading.Thread(target=client.run) for client in clients]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            time.sleep(LOAD_SECONDS / 4)  # the load runs meanwhile
            own_broker.stop()
            time.sleep(3)
            own_broker.start()
            at_restart = budget.spent()
            remaining = LOAD_SECONDS - (time.monotonic() - started)
            time.sleep(max(remaining, 5))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        for client in clients:
            assert client.error is None, repr(client.error)

        accepted = {
            session_id: ids for client in clients for session_id, ids in client.accepted.items()
        }
        event_ids = [event_id for ids in accepted.values() for event_id in ids]
        retries = sum(client.retries for client in clients)
        print(  # noqa: T201 - the load's figures
            f"accepted sessions={len(accepted)} events={len(event_ids)} retries={retries} "
            f"events_at_restart={at_restart}"
        )
        assert retries > 0, "the restart must land during the load"
        assert len(event_ids) > at_restart, "and the load goes on after it"

        pipeline = Pipeline(settings, gateway, [worker])

        def released() -> dict[str, Any] | None:
            response = pipeline.release(new_id())
            if response.status_code == 503:
                return None
            assert response.status_code in (200, 202), response.text
            return response.json()  # type: ignore[no-any-return]

        batch = eventually(released, timeout=120, interval=1.0)
        batch_id = batch["batch_id"]
        eventually(lambda: pipeline.batch(batch_id).json()["status"] == "released", timeout=180)
        sessions = pipeline.batch_sessions(batch_id, page_size=500)

    in_batch = Counter(event["event_id"] for s in sessions for event in s["events"])
    assert {s["session_id"] for s in sessions} == set(accepted), "every session, once"
    assert len(sessions) == len(accepted)
    assert not [e for e, n in in_batch.items() if n > 1], "no event twice"
    assert set(event_ids) - set(in_batch) == set(), "no event answered 200 lost"
    assert set(in_batch) == set(event_ids)

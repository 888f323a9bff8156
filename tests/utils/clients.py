"""Front-end services as the fault tests need them: several concurrent clients posting
sessions and clicks to a gateway, retrying 503s and connection errors as a real client
would (the same body, after a pause), and remembering exactly what was acknowledged.

Then the accounting: every event answered 2xx is in exactly one batch as a new event,
none twice, none lost (a repeat session carries its old events again, marked not new).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from batches.store import BatchStore
from tests.utils.payloads import event_body, session_body

if TYPE_CHECKING:
    from collections.abc import Iterable

    from clickstream.settings import Settings

SESSION_PATH = "/api/v1/clickstream/session"
EVENTS_PATH = "/api/v1/clickstream/session/events"
_RETRY_PAUSE_SECONDS = 0.2


@dataclass
class Acknowledged:
    """What the gateway answered 2xx to: sessions, and events by session."""

    sessions: set[str] = field(default_factory=set)
    events: dict[str, set[str]] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def event_count(self) -> int:
        with self._lock:  # the client threads add to it meanwhile
            return sum(len(ids) for ids in self.events.values())

    def pairs(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(sid, eid) for sid, ids in self.events.items() for eid in ids}


class Clients:
    """``count`` client threads against ``target``, each registering sessions and posting
    ``requests_per_session`` requests of ``events_per_request`` events to each, until
    ``stop()`` or ``max_sessions`` sessions per client (a bound on the load), at most
    ``requests_per_second`` requests a second in all when given.

    A request is retried until it is answered 2xx or ``give_up_seconds`` pass; a
    request given up on is not counted as acknowledged.
    """

    def __init__(
        self,
        target: str | httpx.Client,
        *,
        count: int = 4,
        events_per_request: int = 5,
        requests_per_session: int = 2,
        max_sessions: int = 10_000,
        give_up_seconds: float = 120.0,
        pause_seconds: float = 0.0,
        requests_per_second: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # A gateway's URL (each client thread opens connections of its own), or a client to
        # share, such as the in-process gateway's TestClient.
        self._target: str | httpx.Client = target.rstrip("/") if isinstance(target, str) else target
        self.acknowledged = Acknowledged()
        self._count = count
        self._events_per_request = events_per_request
        self._requests_per_session = requests_per_session
        self._max_sessions = max_sessions
        self._give_up = give_up_seconds
        self._pause = pause_seconds
        self._headers = headers or {}
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_slot = time.monotonic()
        self._slot_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"client-{n}", daemon=True)
            for n in range(count)
        ]
        self.errors: list[BaseException] = []

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> Acknowledged:
        """Stop taking new sessions, let requests in flight finish, and return the tally."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(self._give_up + 30)
        if self.errors:
            raise self.errors[0]
        return self.acknowledged

    def wait_for_events(self, count: int, timeout: float = 120.0) -> None:
        """Until at least ``count`` events were acknowledged in all."""
        deadline = time.monotonic() + timeout
        while self.acknowledged.event_count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.acknowledged.event_count()} events acknowledged")
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            # A TestClient is an httpx.Client, or an httpx2.Client where httpx2 is installed.
            if not isinstance(self._target, str):
                self._sessions(self._target)
                return
            with httpx.Client(base_url=self._target, timeout=30, headers=self._headers) as http:
                self._sessions(http)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by stop()
            self.errors.append(exc)

    def _sessions(self, http: httpx.Client) -> None:
        for _ in range(self._max_sessions):
            if self._stopping.is_set():
                return
            self._one_session(http)

    def _one_session(self, http: httpx.Client) -> None:
        session = session_body()
        session_id = session["session_id"]
        if not self._post(http, SESSION_PATH, session):
            return
        with self.acknowledged._lock:
            self.acknowledged.sessions.add(session_id)
        for _ in range(self._requests_per_session):
            events = [event_body() for _ in range(self._events_per_request)]
            if self._post(http, EVENTS_PATH, {"session_id": session_id, "events": events}):
                with self.acknowledged._lock:
                    ids = self.acknowledged.events.setdefault(session_id, set())
                    ids.update(e["event_id"] for e in events)
            if self._pause:
                time.sleep(self._pause)

    def _pace(self) -> None:
        """Wait for this request's slot: all clients together keep the offered rate."""
        if not self._interval:
            return
        with self._slot_lock:
            slot = max(self._next_slot, time.monotonic())
            self._next_slot = slot + self._interval
        time.sleep(max(0.0, slot - time.monotonic()))

    def _post(self, http: httpx.Client, path: str, body: dict[str, Any]) -> bool:
        self._pace()
        deadline = time.monotonic() + self._give_up
        while True:
            try:
                response = http.post(path, json=body)
            except httpx.TransportError:
                pass  # connection refused or reset: the gateway may be restarting
            else:
                if response.is_success:
                    with self.acknowledged._lock:
                        self.acknowledged.requests += 1
                    return True
                if response.status_code != 503:
                    raise AssertionError(f"{path} answered {response.status_code}: {response.text}")
            if time.monotonic() > deadline:
                return False
            with self.acknowledged._lock:
                self.acknowledged.retries += 1
            time.sleep(_RETRY_PAUSE_SECONDS)


def new_events_in(batches: Iterable[list[dict[str, Any]]]) -> Counter[tuple[str, str]]:
    """How often each (session_id, event_id) is in the given batches as a new event."""
    counted: Counter[tuple[str, str]] = Counter()
    for sessions in batches:
        for session in sessions:
            for event in session["events"]:
                if event.get("is_new", True):
                    counted[(session["session_id"], event["event_id"])] += 1
    return counted


def assert_exactly_once(
    acknowledged: Acknowledged, batches: Iterable[list[dict[str, Any]]]
) -> Counter[tuple[str, str]]:
    """Every acknowledged event is in exactly one batch as new; nothing is in twice."""
    released = [list(sessions) for sessions in batches]
    counted = new_events_in(released)
    doubled = {pair: n for pair, n in counted.items() if n > 1}
    missing = acknowledged.pairs() - set(counted)
    assert not doubled, (
        f"{len(doubled)} events of {len({sid for sid, _ in doubled})} sessions released twice, "
        f"e.g. {list(doubled)[:3]}; the first session in each batch: "
        f"{_describe(next(iter(doubled))[0], released)}"
    )
    assert not missing, (
        f"{len(missing)} acknowledged events never released, e.g. {list(missing)[:3]}"
    )
    return counted


def _describe(session_id: str, batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What each batch holds of one session: enough to tell a lost release mark (a repeat
    not marked as one) from an event stored twice."""
    found = []
    for sessions in batches:
        for session in sessions:
            if session["session_id"] == session_id:
                ids = [event["event_id"] for event in session["events"]]
                found.append(
                    {
                        key: session.get(key)
                        for key in (
                            "batch_id",
                            "is_repeat",
                            "previous_batch_id",
                            "event_count",
                            "new_event_count",
                        )
                    }
                    | {"distinct_events": len(set(ids))}
                )
    return found


def released_batches(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every released batch in MongoDB, batch id -> its sessions with their events."""
    store = BatchStore.from_settings(settings)
    try:
        ids = [doc["_id"] for doc in store.batches.find({"status": "released"}, {"_id": 1})]
        return {str(batch_id): list(store.iter_sessions(batch_id)) for batch_id in ids}
    finally:
        store.close()

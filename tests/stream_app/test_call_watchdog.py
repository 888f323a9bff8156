"""The release coordinator's guard against librdkafka calls that never return (librdkafka
issues 5456 and 5511: send_offsets_to_transaction past its timeout): the worker is stopped,
so that its restart replays the poll with new clients."""

from __future__ import annotations

import threading

from stream_app.exceptions import KafkaCallStuckError
from stream_app.watchdog import CallWatchdog


class _Stops:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, str]] = []
        self.called = threading.Event()

    def __call__(self, error: BaseException, where: str) -> None:
        self.calls.append((error, where))
        self.called.set()


def test_a_call_blocked_past_its_bound_stops_the_worker() -> None:
    stops = _Stops()
    with CallWatchdog(0.2, stops)("send_offsets_to_transaction"):
        # The blocked call: it returns only once the worker was told to stop.
        assert stops.called.wait(10), "the watchdog never fired"
    ((error, where),) = stops.calls
    assert isinstance(error, KafkaCallStuckError)
    assert "send_offsets_to_transaction" in str(error)
    assert where == "in send_offsets_to_transaction"


def test_a_call_that_returns_in_time_stops_nothing() -> None:
    stops = _Stops()
    with CallWatchdog(0.2, stops)("commit_transaction"):
        pass
    # Past the bound, nothing fired: the timer was cancelled when the call returned.
    assert not stops.called.wait(0.6)
    assert stops.calls == []

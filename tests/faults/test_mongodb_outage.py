"""MongoDB away while a worker writes its part of a release: the worker retries the
message (its offset held back) until MongoDB is back, and the batch completes with every
session exactly once. Before, a failed write was acknowledged past and the batch stayed
`releasing` forever."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

from tests.utils.bulk import publish_sessions
from tests.utils.clients import released_batches
from tests.utils.payloads import new_id
from tests.utils.pipeline import (
    Pipeline,
    eventually,
    gateway_client,
    wait_until_both_have_partitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from deploy.local.servers import LocalMongo
    from tests.utils.pipeline import Worker

SESSIONS = 600


def test_a_part_written_while_mongodb_is_away_is_retried_until_it_lands(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker],
    own_mongod: LocalMongo,
) -> None:
    settings = settings_factory(
        mongodb_uri=own_mongod.address,
        tick_interval_seconds=0.5,
        release_wait_seconds=1.0,
        mongodb_server_selection_timeout_seconds=3.0,
    )
    first = worker_factory(settings).start()
    second = worker_factory(settings).start()

    wait_until_both_have_partitions(first, second)
    leader = eventually(lambda: next((w for w in (first, second) if _leads(w)), None))
    follower = second if leader is first else first
    ids = publish_sessions(settings, sessions=SESSIONS, events_each=2)

    with gateway_client(settings, [first, second]) as gateway:
        pipeline = Pipeline(settings, gateway, [first, second])
        pipeline.wait_session(ids[-1], events=2)
        assert follower.pid is not None
        os.kill(follower.pid, signal.SIGSTOP)  # its markers wait, unread
        try:
            accepted = pipeline.release(new_id())
            assert accepted.status_code == 202, accepted.text
            batch_id = accepted.json()["batch_id"]
            own_mongod.stop()
        finally:
            os.kill(follower.pid, signal.SIGCONT)

        # The follower reads its markers and fails to write its part, for real.
        eventually(lambda: "handling failed, retrying" in follower.log(), timeout=120)
        own_mongod.start()
        done = eventually(
            lambda: pipeline.batch(batch_id).json()["status"] == "released", timeout=180
        )
        assert done
        answer = pipeline.batch(batch_id).json()

    assert (answer["session_count"], answer["event_count"]) == (SESSIONS, 2 * SESSIONS)
    [sessions] = released_batches(settings).values()
    counted = Counter(s["session_id"] for s in sessions)
    assert set(counted) == set(ids), "no session missing"
    assert max(counted.values()) == 1, "no session doubled"
    assert "worker stopping" not in follower.log(), "retried, not stopped, within its budget"


def _leads(worker: Worker) -> bool:
    return "release coordinator active" in worker.log()

"""The broker stopped and started again under load from several clients: every event
answered 2xx is released exactly once, none twice, none lost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tests.utils.clients import Clients, assert_exactly_once
from tests.utils.payloads import new_id
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.servers import Broker
    from tests.utils.pipeline import Worker

# About 200 events/s from 4 clients, so that the load spans the broker's restart.
REQUESTS_PER_SECOND = 40
BROKER_DOWN_SECONDS = 3.0


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
    with gateway_client(settings, [worker]) as gateway:
        with Clients(
            gateway,
            count=4,
            events_per_request=5,
            requests_per_session=8,
            requests_per_second=REQUESTS_PER_SECOND,
        ) as clients:
            clients.wait_for_events(500)
            own_broker.stop()
            time.sleep(BROKER_DOWN_SECONDS)  # the broker stays down a while, under load
            own_broker.start()
            at_restart = clients.acknowledged.event_count()
            clients.wait_for_events(at_restart + 1000)
        acknowledged = clients.stop()
        assert acknowledged.retries > 0, "the restart must land during the load"

        pipeline = Pipeline(settings, gateway, [worker])

        def released() -> dict[str, Any] | None:
            response = pipeline.release(new_id())
            if response.status_code == 503:
                return None
            assert response.status_code in (200, 202), response.text
            return response.json()  # type: ignore[no-any-return]

        batch_id = eventually(released, timeout=120, interval=1.0)["batch_id"]
        eventually(lambda: pipeline.batch(batch_id).json()["status"] == "released", timeout=180)
        sessions = pipeline.batch_sessions(batch_id, page_size=500)

    assert_exactly_once(acknowledged, [sessions])
    assert acknowledged.sessions <= {s["session_id"] for s in sessions}, "every session"

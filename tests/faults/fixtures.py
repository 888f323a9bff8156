"""What the fault tests break on purpose: a gateway process of their own (so clients reach
it over real HTTP while workers die), and a mongod of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from deploy.local.servers import LocalGateway, LocalMongo, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker


@pytest.fixture
def gateway_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalGateway]]:
    """Starts `clickstream gateway` processes on the test's settings, reading sessions
    from the given workers; each is stopped at the end of the test."""
    started: list[LocalGateway] = []

    def start(settings: Settings, workers: list[Worker], **env: str) -> LocalGateway:
        environment = {
            **settings.environment(),
            "CLICKSTREAM_WORKER_URLS": ",".join(w.url for w in workers),
            "CLICKSTREAM_LOG_LEVEL": "INFO",
            **env,
        }
        gateway = LocalGateway(tmp_path_factory.mktemp("gateway"), env=environment)
        started.append(gateway)
        return gateway.start(timeout=60)

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def own_mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMongo]:
    """A mongod of this test alone, since the test stops it (and starts it again on the
    same port and data)."""
    server = LocalMongo(tmp_path_factory.mktemp("own-mongod"), free_port()).start()
    try:
        yield server
    finally:
        server.stop()

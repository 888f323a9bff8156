"""Session-scoped real servers and per-test settings with topics of their own."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import pytest

from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from schemas import AvroCodec, Topics
from tests.servers import new_broker, new_database
from tests.utils.kafka import TopicReader

TEST_INTERNAL_TOKEN = "test-internal-token"  # noqa: S105 - the tests' own
TEST_CONTROL_SECRET = "test-control-secret"  # noqa: S105 - the tests' own

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.servers import Broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An external broker when CLICKSTREAM_KAFKA_BOOTSTRAP names one; else one of ours."""
    external = os.environ.get("CLICKSTREAM_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = new_broker(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield broker.bootstrap
    finally:
        broker.close()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of the test alone, for tests that stop and start it again."""
    broker = new_broker(tmp_path_factory.mktemp("own-kafka")).start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An external MongoDB when CLICKSTREAM_MONGODB_URI names one; else one of ours."""
    external = os.environ.get("CLICKSTREAM_MONGODB_URI")
    if external:
        yield external
        return
    database = new_database(tmp_path_factory.mktemp("mongodb")).start()
    try:
        yield database.uri
    finally:
        database.stop()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec()


@pytest.fixture
def settings_factory(
    kafka_bootstrap: str, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Builds settings on the test servers with topics of their own (a uuid prefix),
    created before they are returned."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "kafka_bootstrap": kafka_bootstrap,
            "mongodb_uri": mongodb_uri,
            # a database per test, like its topics
            "mongodb_database": f"test_{uuid.uuid4().hex[:12]}",
            "topic_prefix": f"test-{uuid.uuid4().hex[:12]}.",
            "data_dir": tmp_path_factory.mktemp("data"),
            "internal_tokens": [TEST_INTERNAL_TOKEN],
            "control_secret": [TEST_CONTROL_SECRET],
            # As `clickstream run` on its local broker (there every 10 s): handled records
            # deleted, so every fault test also proves that no restart needs them.
            "worker_source_purge_seconds": 1.0,
            **overrides,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        ensure_topics(settings)
        return settings

    return build


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def topics(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)


@pytest.fixture
def published(settings: Settings, codec: AvroCodec) -> TopicReader:
    """Reads back what is on this test's topics."""
    return TopicReader(settings.kafka_common_config(), codec)

"""The real servers the suite runs against: the project's local servers by default, or
Apache Kafka and MongoDB containers when a Docker engine is present and
``CLICKSTREAM_TEST_DOCKER=1``. Either way, nothing is faked."""

from __future__ import annotations

import contextlib
import os
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Self

from deploy.local.servers import LocalKafka, LocalMongo, free_port

if TYPE_CHECKING:
    from pathlib import Path

USE_DOCKER = os.environ.get("CLICKSTREAM_TEST_DOCKER") == "1"
KAFKA_IMAGE = os.environ.get("CLICKSTREAM_TEST_KAFKA_IMAGE", "apache/kafka:3.8.0")
MONGO_IMAGE = os.environ.get("CLICKSTREAM_TEST_MONGO_IMAGE", "mongo:7.0")


class Broker(ABC):
    """A Kafka broker the tests may stop and start again on the same address."""

    bootstrap: str

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None:
        """Stop; ``start`` brings it back with its data."""

    def close(self) -> None:
        """Stop for good."""
        self.stop()


class Database(ABC):
    uri: str

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...


class LocalBroker(Broker):
    """noida-db; a restart keeps the same port and data dir."""

    def __init__(self, data_dir: Path) -> None:
        self._server = LocalKafka(data_dir, free_port())

    def start(self) -> Self:
        self._server.start()
        self.bootstrap = self._server.address
        return self

    def stop(self) -> None:
        self._server.stop()

    def terminate_unsaved(self) -> None:
        """A bare SIGTERM: what the broker acknowledged in its last moments is lost (see
        LocalKafka.stop), like a broker that lost its log's tail."""
        self._server.stop(save=False)

    @property
    def pid(self) -> int | None:
        return self._server.pid


class LocalDatabase(Database):
    def __init__(self, data_dir: Path) -> None:
        self._server = LocalMongo(data_dir)

    def start(self) -> Self:
        self._server.start()
        self.uri = self._server.address
        return self

    def stop(self) -> None:
        self._server.stop()


class DockerBroker(Broker):
    """Apache Kafka in KRaft mode. The host port is mapped to the same number inside, so
    the advertised address works from the host."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._container = (
            DockerContainer(KAFKA_IMAGE)
            .with_bind_ports(self.port, self.port)
            .with_env("KAFKA_NODE_ID", "1")
            .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env("KAFKA_LISTENERS", f"PLAINTEXT://:{self.port},CONTROLLER://:9093")
            .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{self.port}")
            .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
            )
            .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        )
        self._started = False

    def start(self) -> Self:
        if not self._started:
            self._container.start()
            self._started = True
        else:
            self._container.get_wrapped_container().start()
        _wait(lambda: _kafka_answers(self.bootstrap), "Kafka container")
        return self

    def stop(self) -> None:
        self._container.get_wrapped_container().stop()

    def close(self) -> None:
        self._container.stop()


class DockerDatabase(Database):
    """MongoDB as a one-node replica set, like production and the local server."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        self.port = free_port()
        self._container = (
            DockerContainer(MONGO_IMAGE)
            .with_bind_ports(self.port, self.port)
            .with_command(f"mongod --replSet rs0 --bind_ip_all --port {self.port}")
        )

    def start(self) -> Self:
        from pymongo import MongoClient  # noqa: PLC0415
        from pymongo.errors import OperationFailure  # noqa: PLC0415

        self._container.start()
        direct = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        _wait(lambda: _mongo_answers(direct), "MongoDB container")
        with MongoClient(direct) as client:
            member = {"_id": 0, "host": f"127.0.0.1:{self.port}"}
            with contextlib.suppress(OperationFailure):
                client.admin.command("replSetInitiate", {"_id": "rs0", "members": [member]})
            _wait(lambda: bool(client.admin.command("hello").get("isWritablePrimary")), "primary")
        self.uri = f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"
        return self

    def stop(self) -> None:
        self._container.stop()


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    try:
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=2)
    except Exception:  # noqa: BLE001
        return False
    return True


def _mongo_answers(uri: str) -> bool:
    from pymongo import MongoClient  # noqa: PLC0415
    from pymongo.errors import PyMongoError  # noqa: PLC0415

    with MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
    return True


def _wait(check, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not become ready")
        time.sleep(0.2)


def new_broker(data_dir: Path) -> Broker:
    return DockerBroker() if USE_DOCKER else LocalBroker(data_dir)


def new_database(data_dir: Path) -> Database:
    return DockerDatabase() if USE_DOCKER else LocalDatabase(data_dir)

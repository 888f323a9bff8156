"""Durable writes, said explicitly: topics with min.insync.replicas and a broker that is
stopped by SIGTERM only (MongoDB's majority concerns: tests/batches/test_store.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from deploy.kafka_topics import min_insync_replicas
from deploy.local.servers import LocalKafka, LocalServer
from schemas import Topics
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from clickstream.settings import Settings


def test_topics_are_created_with_min_insync_replicas(settings: Settings) -> None:
    admin = AdminClient(settings.kafka_common_config())
    names = Topics(settings.topic_prefix).layout(settings.topic_partitions)
    resources = [ConfigResource("topic", name) for name in names]

    described = {
        resource.name: future.result(30)
        for resource, future in admin.describe_configs(resources).items()
    }

    assert {n: c["min.insync.replicas"].value for n, c in described.items()} == dict.fromkeys(
        names, "1"
    )
    batches = Topics(settings.topic_prefix).batches
    assert described[batches]["retention.ms"].value == "-1", "the record of every release"
    assert [min_insync_replicas(n) for n in (1, 2, 3, 5)] == [1, 1, 2, 4]


class _SlowToStop(LocalServer):
    """A process that ignores SIGTERM until told to exit: a broker writing a long snapshot."""

    name = "slow"
    port_setting = "CLICKSTREAM_SLOW_PORT"

    def binary(self) -> Path:
        return Path("/bin/sh")

    def command(self) -> list[str]:
        done, ready = self.data_dir / "done", self.data_dir / "ready"
        return [
            str(self.binary()),
            "-c",
            f'trap "" TERM; touch {ready}; while [ ! -e {done} ]; do sleep 0.05; done',
        ]

    def probe(self) -> bool:
        return (self.data_dir / "ready").exists()  # SIGTERM is ignored from now on

    @property
    def address(self) -> str:
        return "nowhere"


@pytest.mark.parametrize("killed", [True, False])
def test_the_broker_is_never_sigkilled_other_servers_are_after_their_stop_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, killed: bool
) -> None:
    assert LocalKafka.kill_after_stop_timeout is False
    server = _SlowToStop(tmp_path)
    server.stop_timeout = 0.3
    server.kill_after_stop_timeout = killed
    server.start()
    process = server._process
    assert process is not None
    stopping = threading.Thread(target=server.stop)
    try:
        with caplog.at_level(logging.WARNING, logger="deploy.local.servers"):
            stopping.start()
            if killed:
                stopping.join(30)
            else:
                eventually(lambda: "still stopping after SIGTERM" in caplog.text, timeout=30)
                assert process.poll() is None, "still running, not killed"
            (tmp_path / "done").touch()
            stopping.join(30)
    finally:
        (tmp_path / "done").touch()
        stopping.join(30)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == (-9 if killed else 0)

"""The local servers: started on loopback, waited for, stopped by pid, data kept."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Producer
from pymongo import MongoClient

from deploy.local.servers import LocalKafka, LocalMongo, LocalServerError, free_port, is_running
from tests.servers import USE_DOCKER
from tests.utils.kafka import TopicReader

if TYPE_CHECKING:
    from pathlib import Path

    from schemas import AvroCodec

pytestmark = pytest.mark.skipif(USE_DOCKER, reason="tests the project's own local servers")


def test_a_port_already_taken_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(LocalServerError) as error:
            LocalKafka(tmp_path, port).start()

    message = str(error.value)
    assert "\n" not in message
    assert f"port {port}" in message
    assert "CLICKSTREAM_KAFKA_PORT" in message


def test_a_server_that_does_not_come_up_names_its_log(tmp_path: Path) -> None:
    (tmp_path / "mongodb").mkdir()
    (tmp_path / "mongodb" / "WiredTiger.turtle").write_text("not what mongod wrote")

    with pytest.raises(
        LocalServerError, match=r"mongod exited with code \d+ while starting; see .*mongod\.log"
    ):
        LocalMongo(tmp_path).start(timeout=30)

    assert not (tmp_path / "mongod.pid").exists()


def test_kafka_keeps_messages_across_a_restart_and_stops_by_pid(
    tmp_path: Path, codec: AvroCodec
) -> None:
    kafka = LocalKafka(tmp_path).start()
    pid = kafka.pid
    assert pid is not None
    producer = Producer({"bootstrap.servers": kafka.address})
    value = codec.encode(
        "clickstream.SessionEvent",
        {
            "session_id": "s",
            "event_id": "e",
            "object_id": "o",
            "event_type": "click",
            "created_at": 1,
            "meta": None,
            "received_at_ms": 1,
        },
    )
    producer.produce("kept", value, b"s")
    assert producer.flush(10) == 0
    kafka.stop()
    assert not is_running(pid)
    assert not (tmp_path / "kafka.pid").exists()

    with LocalKafka(tmp_path) as again:
        messages = TopicReader({"bootstrap.servers": again.address}, codec).read("kept")

    assert [m.record["event_id"] for m in messages] == ["e"]


def test_mongod_keeps_documents_across_a_restart_on_another_port(tmp_path: Path) -> None:
    with LocalMongo(tmp_path) as mongo, MongoClient(mongo.address) as client:
        client.db.things.insert_one({"_id": 1})
        first_port = mongo.port

    with LocalMongo(tmp_path, free_port()) as mongo, MongoClient(mongo.address) as client:
        assert mongo.port != first_port
        assert client.db.things.find_one({"_id": 1}) == {"_id": 1}
        assert client.admin.command("hello")["isWritablePrimary"]


def test_a_leftover_server_of_a_killed_run_is_stopped_first(tmp_path: Path) -> None:
    leftover = LocalKafka(tmp_path).start()
    leftover_pid = leftover.pid
    assert leftover_pid is not None

    with LocalKafka(tmp_path) as fresh:
        assert not is_running(leftover_pid)
        assert fresh.pid != leftover_pid
    leftover.stop()

"""Operators release by a message on the releases topic and read the answer on the batch
topic: the contract of the README, spoken with confluent-kafka, the library and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import KafkaError, Message, Producer
from pymongo import MongoClient

from clickstream.clock import now_ms
from consumers.batch_reader import BatchReader
from producers.exceptions import InvalidInputError
from producers.library import ClickstreamProducer
from schemas import Topics
from tests.utils.kafka import Published, TopicReader
from tests.utils.payloads import event_body, new_id, session_body

if TYPE_CHECKING:
    from clickstream.settings import Settings
    from schemas import AvroCodec
    from tests.utils.pipeline import Pipeline

RELEASE_OUTCOME = "clickstream.ReleaseOutcome"
BATCH_RELEASED = "clickstream.BatchReleased"
WAIT_SECONDS = 60.0


def _request_by_message(
    settings: Settings, codec: AvroCodec, release_id: str, min_idle_seconds: int = 0
) -> str:
    """A ReleaseRequested produced straight to the releases topic, as the README shows;
    the request id once Kafka acknowledged it."""
    request_id = new_id()
    value = codec.encode(
        "clickstream.ReleaseRequested",
        {
            "request_id": request_id,
            "release_id": release_id,
            "min_idle_seconds": min_idle_seconds,
            "requested_at_ms": now_ms(),
        },
    )
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            errors.append(error)

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_common_config()["bootstrap.servers"],
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    producer.produce(
        Topics(settings.topic_prefix).releases,
        value,
        key=release_id.encode(),
        on_delivery=delivered,
    )
    assert producer.flush(30) == 0
    assert errors == []
    return request_id


def _gather(pipeline: Pipeline, count: int) -> set[str]:
    sessions = [session_body() for _ in range(count)]
    for session in sessions:
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body(), event_body()])
    return {s["session_id"] for s in sessions}


def _batch_topic(pipeline: Pipeline, codec: AvroCodec) -> list[Published]:
    reader = TopicReader(pipeline.settings.kafka_common_config(), codec)
    return reader.read(Topics(pipeline.settings.topic_prefix).batches)


def test_a_message_on_the_releases_topic_gets_its_batch_announced_with_its_ids(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    gathered = _gather(pipeline, 4)
    release_id = new_id()

    request_id = _request_by_message(pipeline.settings, codec, release_id)

    with BatchReader(pipeline.settings) as reader:
        answer = reader.wait_for_release(release_id, request_id=request_id, timeout=WAIT_SECONDS)
    assert answer.released
    assert answer.batch_id is not None
    assert answer.request_ids == (request_id,)
    assert (answer.session_count, answer.event_count) == (4, 8)
    released = pipeline.batch_sessions(answer.batch_id)
    assert {s["session_id"] for s in released} == gathered
    assert len(released) == 4
    outcome, announced = _batch_topic(pipeline, codec)
    assert (outcome.name, outcome.key) == (RELEASE_OUTCOME, answer.batch_id.encode())
    assert outcome.record["status"] == "RELEASED"
    assert (outcome.record["release_id"], outcome.record["request_ids"]) == (
        release_id,
        [request_id],
    )
    assert announced.name == BATCH_RELEASED
    assert (announced.record["batch_id"], announced.record["release_id"]) == (
        answer.batch_id,
        release_id,
    )


def test_the_same_release_id_by_message_then_by_http_gives_one_batch(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    gathered = _gather(pipeline, 3)
    release_id = new_id()

    request_id = _request_by_message(pipeline.settings, codec, release_id)
    by_http = pipeline.release(release_id)

    assert by_http.status_code == 200, by_http.text
    batch_id = by_http.json()["batch_id"]
    with BatchReader(pipeline.settings) as reader:
        answer = reader.wait_for_release(release_id, request_id=request_id, timeout=WAIT_SECONDS)
        again = reader.wait_for_release(release_id, timeout=WAIT_SECONDS)
    assert answer.batch_id == again.batch_id == batch_id
    assert request_id in answer.request_ids
    assert {s["session_id"] for s in pipeline.batch_sessions(batch_id)} == gathered
    with MongoClient(pipeline.settings.mongodb_url) as client:
        batches = list(client[pipeline.settings.mongodb_database].batches.find())
    assert [str(b["_id"]) for b in batches] == [batch_id]
    assert [(m.name, m.record["batch_id"]) for m in _batch_topic(pipeline, codec)] == [
        (RELEASE_OUTCOME, batch_id),
        (BATCH_RELEASED, batch_id),
    ], "announced once"


def test_a_release_with_nothing_to_release_is_announced_as_empty(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    release_id = new_id()

    request_id = _request_by_message(pipeline.settings, codec, release_id)

    with BatchReader(pipeline.settings) as reader:
        answer = reader.wait_for_release(release_id, request_id=request_id, timeout=WAIT_SECONDS)
    assert not answer.released
    assert answer.batch_id is None
    assert answer.request_ids == (request_id,)
    assert answer.session_count == 0
    [outcome] = _batch_topic(pipeline, codec)
    assert outcome.name == RELEASE_OUTCOME
    assert outcome.record["status"] == "EMPTY"
    assert (outcome.record["release_id"], outcome.record["request_ids"]) == (
        release_id,
        [request_id],
    )
    assert pipeline.batch(outcome.record["batch_id"]).status_code == 404, "no batch made"
    with BatchReader(pipeline.settings, group_id=new_id()) as jobs:
        assert list(jobs.follow(idle_timeout=3)) == [], "nothing for fine-tuning jobs"


def test_the_library_and_the_cli_release_by_message(pipeline: Pipeline) -> None:
    empty_id, first_id, second_id = new_id(), new_id(), new_id()
    cli = [str(Path(sys.executable).with_name("clickstream")), "release"]
    env = pipeline.settings.environment()

    nothing = subprocess.run(  # noqa: S603 - our own command
        [*cli, empty_id, "--via", "kafka"], env=env, capture_output=True, timeout=120, check=False
    )
    assert nothing.returncode == 1, nothing.stderr
    assert json.loads(nothing.stdout)["status"] == "empty"

    gathered = _gather(pipeline, 2)
    with ClickstreamProducer(pipeline.settings) as producer:
        with pytest.raises(InvalidInputError):
            producer.request_release("", 0)
        request_id = producer.request_release(first_id)
    with BatchReader(pipeline.settings) as reader:
        answer = reader.wait_for_release(first_id, request_id=request_id, timeout=WAIT_SECONDS)
    assert answer.released
    assert answer.batch_id is not None
    assert {s["session_id"] for s in pipeline.batch_sessions(answer.batch_id)} == gathered

    later = _gather(pipeline, 1)
    done = subprocess.run(  # noqa: S603
        [*cli, second_id, "--via", "kafka"], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert (printed["status"], printed["release_id"], printed["session_count"]) == (
        "released",
        second_id,
        1,
    )
    assert {s["session_id"] for s in pipeline.batch_sessions(printed["batch_id"])} == later

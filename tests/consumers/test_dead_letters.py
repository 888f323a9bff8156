"""`clickstream dead-letters list|show|replay`: an operator reads what the stream could not
use and sends it again once the cause is fixed, never doubling a click."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from confluent_kafka import Producer

from schemas import Topics
from tests.consumers.test_batch_export import clickstream
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import Pipeline, eventually, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker


def listed(settings: Settings, *options: str) -> list[dict[str, Any]]:
    done = clickstream(settings, "dead-letters", "list", *options)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def replayed(settings: Settings, *options: str) -> dict[str, Any]:
    done = clickstream(settings, "dead-letters", "replay", "--wait", "5", *options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_letters_are_listed_shown_and_replayed_without_a_double(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_factory(orphan_event_wait_seconds=2, tick_interval_seconds=0.5)
    worker = worker_factory(settings).start()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        late_id = new_id()
        orphans = [event_body(), event_body()]
        pipeline.add_events(late_id, orphans)  # its session is registered too late
        producer = Producer({**settings.kafka_common_config(), "partitioner": "murmur2_random"})
        producer.produce(Topics(settings.topic_prefix).events, b"not a message", b"k")
        assert producer.flush(30) == 0

        expired = eventually(
            lambda: (
                len(found := listed(settings, "--reason", "orphan_event_expired")) == 2 and found
            ),
            timeout=60,
        )
        [garbage] = eventually(lambda: listed(settings, "--reason", "undecodable_message"))
        assert {letter["session_id"] for letter in expired} == {late_id}
        assert listed(settings, "--since", "2999-01-01T00:00:00") == []
        shown = clickstream(settings, "dead-letters", "show", expired[0]["id"])
        assert shown.returncode == 0, shown.stderr
        message = json.loads(shown.stdout)["message"]
        assert message["schema"] == "clickstream.SessionEvent"
        assert message["record"]["event_id"] in {o["event_id"] for o in orphans}
        unknown = clickstream(settings, "dead-letters", "show", "0:999999")
        assert unknown.returncode == 1
        assert "no letter 0:999999" in unknown.stderr

        # The cause fixed: the session registered, its clicks sent again, twice.
        pipeline.register(session_body(session_id=late_id))
        first = replayed(settings, "--reason", "orphan_event_expired")
        again = replayed(settings, "--reason", "orphan_event_expired")
        last = event_body()  # after the replays on the session's partition: they came first
        pipeline.add_events(late_id, [last])
        session = pipeline.wait_session(late_id, events=3)

        assert sorted(first["sent"]) == sorted(letter["id"] for letter in expired)
        assert again["sent"] == first["sent"]
        assert first["refused_again"] == again["refused_again"] == []
        assert sorted(e["event_id"] for e in session["events"]) == sorted(
            e["event_id"] for e in [*orphans, last]
        ), "every click once"

        # Still bad: said so, and a dry run sends nothing.
        dry = replayed(settings, "--reason", "undecodable_message", "--dry-run")
        refused = replayed(settings, "--reason", "undecodable_message")
        assert dry["sent"] == refused["sent"] == [garbage["id"]]
        assert [r["reason"] for r in refused["refused_again"]] == ["undecodable_message"]
        assert len(listed(settings, "--reason", "undecodable_message")) == 2

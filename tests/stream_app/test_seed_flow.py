"""The whole flow of the seed docs: register, add clicks, release, read the batch."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from consumers.batch_reader import BatchReader
from schemas import Topics
from tests.utils.kafka import TopicReader
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import eventually

if TYPE_CHECKING:
    from schemas import AvroCodec
    from tests.utils.pipeline import Pipeline


def test_seed_flow_from_registration_to_a_fine_tuning_job(
    pipeline: Pipeline, codec: AvroCodec
) -> None:
    session = session_body(search_meta={"lang": "en", "big": 2**70})
    session_id = session["session_id"]
    clicks = [
        event_body(item_info={"pos": 1}, event_type="click"),
        event_body(item_info={}),
        event_body(),
    ]
    pipeline.register(session)
    pipeline.add_events(session_id, clicks)

    shown = pipeline.wait_session(session_id, events=3)
    assert shown["search_query"] == "user search query"
    assert shown["search_meta"] == {"lang": "en", "big": 2**70}
    assert shown["is_irrelevant"] is False
    assert [e["event_id"] for e in shown["events"]] == [c["event_id"] for c in clicks]
    assert shown["events"][0]["meta"] == {"pos": 1}
    assert shown["events"][1]["event_type"] == "click"

    response = pipeline.release("090bda77a5e048d59a1e310dc20fbd6d")

    assert response.status_code == 200, response.text
    answer = response.json()
    assert re.fullmatch("[0-9a-f]{24}", answer["batch_id"])
    assert answer["release_id"] == "090bda77a5e048d59a1e310dc20fbd6d"
    assert answer["status"] == "released"
    assert answer["session_count"] == 1
    assert answer["event_count"] == 3
    assert answer["released_at"] >= answer["requested_at"]
    batch_id = answer["batch_id"]
    assert pipeline.batch(batch_id).json() == answer

    [released] = pipeline.batch_sessions(batch_id)
    assert released["session_id"] == session_id
    assert released["is_repeat"] is False
    assert released["search_results"][0]["meta"] == {}
    assert [e["event_id"] for e in released["events"]] == [c["event_id"] for c in clicks]

    topic_reader = TopicReader(pipeline.settings.kafka_common_config(), codec)
    batches_topic = Topics(pipeline.settings.topic_prefix).batches
    # Announced in the coordinator's transaction right after the batch is marked released.
    announcements = eventually(lambda: topic_reader.read(batches_topic), timeout=10)
    assert [(m.name, m.key, m.record["batch_id"]) for m in announcements] == [
        ("clickstream.ReleaseOutcome", batch_id.encode(), batch_id),
        ("clickstream.BatchReleased", batch_id.encode(), batch_id),
    ]
    assert announcements[0].record["status"] == "RELEASED"
    assert announcements[0].record["release_id"] == answer["release_id"]
    assert announcements[1].record["session_count"] == 1

    with BatchReader(pipeline.settings, group_id=new_id()) as reader:
        [batch] = list(reader.follow(idle_timeout=3))
        assert batch.batch_id == batch_id
        assert batch.event_count == 3
        [read] = list(reader.sessions(batch_id))
    assert read == released

"""`payload_filter` and `sort_by` (the original service v1.0.0's session fields) go through
the stream into batches and exports; registrations written before they existed still read."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer

from schemas.codec import SCHEMA_DIR
from tests.consumers.test_batch_export import clickstream, parquet_rows
from tests.utils.payloads import event_body, new_id, session_body

if TYPE_CHECKING:
    from pathlib import Path

    from clickstream.settings import Settings
    from tests.utils.pipeline import Pipeline

PAYLOAD_FILTER = {"query": {"terms": {"field": "brand", "values": ["acme", "globex"]}}}
SORT_BY = {"field": "price", "order": "desc", "force_not_payload": False}


def publish_version_1_registration(settings: Settings, session: dict[str, Any]) -> None:
    """A SessionRegistered of schema id 1, as a producer built before v2 wrote it."""
    named: dict[str, Any] = {}
    parse_schema(
        json.loads((SCHEMA_DIR / "clickstream.SearchResult.avsc").read_text()), named_schemas=named
    )
    schema = parse_schema(
        json.loads((SCHEMA_DIR / "earlier" / "clickstream.SessionRegistered@1.avsc").read_text()),
        named_schemas=named,
    )
    body = io.BytesIO()
    schemaless_writer(body, schema, session)
    producer = Producer({**settings.kafka_common_config(), "partitioner": "murmur2_random"})
    producer.produce(
        f"{settings.topic_prefix}sessions",
        struct.pack(">bI", 0, 1) + body.getvalue(),
        session["session_id"].encode(),
    )
    assert producer.flush(30) == 0


def test_the_search_fields_reach_the_batch_and_its_exports(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    sent = session_body(payload_filter=PAYLOAD_FILTER, sort_by=SORT_BY)
    pipeline.register(sent)
    pipeline.add_events(
        sent["session_id"], [event_body(object_id=sent["search_results"][0]["object_id"])]
    )
    old_id = new_id()
    publish_version_1_registration(
        pipeline.settings,
        {
            "session_id": old_id,
            "search_query": "older producer",
            "search_results": [{"object_id": "o", "rank": None, "meta": None}],
            "search_meta": None,
            "user_id": None,
            "created_at": int(time.time()),
            "received_at_ms": int(time.time() * 1000),
        },
    )

    shown = pipeline.wait_session(sent["session_id"], events=1)
    older = pipeline.wait_session(old_id)
    assert (shown["payload_filter"], shown["sort_by"]) == (PAYLOAD_FILTER, SORT_BY)
    assert (older["payload_filter"], older["sort_by"]) == (None, None)
    assert older["search_query"] == "older producer"

    released = pipeline.release(new_id())
    assert released.status_code == 200, released.text
    batch_id = released.json()["batch_id"]
    in_batch = {s["session_id"]: s for s in pipeline.batch_sessions(batch_id)}
    assert (
        in_batch[sent["session_id"]]["payload_filter"],
        in_batch[sent["session_id"]]["sort_by"],
    ) == (
        PAYLOAD_FILTER,
        SORT_BY,
    )
    assert (in_batch[old_id]["payload_filter"], in_batch[old_id]["sort_by"]) == (None, None)

    as_parquet = tmp_path / "sessions.parquet"
    done = clickstream(
        pipeline.settings, "batch", "export", batch_id, "--format", "parquet", "-o", str(as_parquet)
    )
    assert done.returncode == 0, done.stderr
    rows = {row["session_id"]: row for row in parquet_rows(as_parquet)}
    assert (rows[sent["session_id"]]["payload_filter"], rows[sent["session_id"]]["sort_by"]) == (
        PAYLOAD_FILTER,
        SORT_BY,
    )

    training = tmp_path / "training.jsonl"
    done = clickstream(
        pipeline.settings, "batch", "export", batch_id, "--rows", "training", "-o", str(training)
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in training.read_text().splitlines()]
    [clicked] = [
        r for r in lines if r["session_id"] == sent["session_id"] and r["label"] == "positive"
    ]
    assert (json.loads(clicked["payload_filter"]), clicked["sort_by"]) == (PAYLOAD_FILTER, SORT_BY)

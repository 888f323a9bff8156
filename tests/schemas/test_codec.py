"""The message contract: Confluent wire format, lossless JSON text, clear decode errors."""

from __future__ import annotations

import json
import struct

import pytest

from schemas import (
    AvroCodec,
    MalformedMessageError,
    RecordMismatchError,
    UnknownSchemaError,
    from_json_text,
    to_json_text,
)
from schemas.codec import SCHEMA_DIR, SCHEMA_IDS_FILE

EVENT = {
    "session_id": "s",
    "event_id": "e",
    "object_id": "o",
    "event_type": "click",
    "created_at": 1_700_000_000,
    "meta": '{"a":1}',
    "received_at_ms": 1_700_000_000_123,
}


def test_every_message_kind_has_a_file_and_a_unique_id(codec: AvroCodec) -> None:
    ids = {
        k: v for k, v in json.loads(SCHEMA_IDS_FILE.read_text()).items() if not k.startswith("_")
    }

    assert set(codec.names) == set(ids)
    assert len(set(ids.values())) == len(ids)
    for name in ids:
        assert (SCHEMA_DIR / f"{name}.avsc").exists()


def test_wire_format_is_magic_byte_schema_id_then_avro(codec: AvroCodec) -> None:
    data = codec.encode("clickstream.SessionEvent", EVENT)

    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    assert schema_id == codec.schema_id("clickstream.SessionEvent")
    decoded = codec.decode(data)
    assert decoded.name == "clickstream.SessionEvent"
    assert decoded.record == EVENT


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", MalformedMessageError),
        (b"\x01\x00\x00\x00\x02abc", MalformedMessageError),
        (b"\x00\x00\x00\x27\x0f\x02s", UnknownSchemaError),
        (b"\x00\x00\x00\x00\x02\x02s", MalformedMessageError),
    ],
    ids=["empty", "wrong magic byte", "unknown schema id", "truncated body"],
)
def test_bytes_outside_the_contract_raise_a_clear_error(
    codec: AvroCodec, data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        codec.decode(data)


def test_trailing_bytes_are_refused(codec: AvroCodec) -> None:
    with pytest.raises(MalformedMessageError, match="trailing"):
        codec.decode(codec.encode("clickstream.SessionEvent", EVENT) + b"\x00")


@pytest.mark.parametrize(
    ("field", "value"),
    [("created_at", "yesterday"), ("event_type", None), ("event_id", 7)],
    ids=["string for a long", "null for a string", "int for a string"],
)
def test_record_that_does_not_fit_the_schema_is_refused(
    codec: AvroCodec, field: str, value: object
) -> None:
    with pytest.raises(
        RecordMismatchError, match=f"record does not fit clickstream.SessionEvent.*{field}"
    ):
        codec.encode("clickstream.SessionEvent", {**EVENT, field: value})


def test_json_text_round_trips_losslessly() -> None:
    value = {"big": 2**90, "f": [0.1, -0.0, 1e308], "u": "é🔍", "n": None, "l": [[], {}]}

    text = to_json_text(value)

    assert from_json_text(text) == value
    assert "é🔍" in text, "unicode is kept as is, not escaped"
    assert from_json_text(None) is None
    with pytest.raises(ValueError, match="JSON"):
        to_json_text({"x": float("nan")})


def _written_with(path_name: str, schema_id: int, record: dict[str, object]) -> bytes:
    """A message as a producer of an earlier schema version wrote it."""
    import io

    from fastavro import parse_schema, schemaless_writer

    named: dict[str, object] = {}
    parse_schema(
        json.loads((SCHEMA_DIR / "clickstream.SearchResult.avsc").read_text()), named_schemas=named
    )
    schema = parse_schema(
        json.loads((SCHEMA_DIR / "earlier" / path_name).read_text()), named_schemas=named
    )
    body = io.BytesIO()
    schemaless_writer(body, schema, record)
    return struct.pack(">bI", 0, schema_id) + body.getvalue()


def test_registrations_of_version_1_read_as_the_newest(codec: AvroCodec) -> None:
    old = {
        "session_id": "s",
        "search_query": "q",
        "search_results": [{"object_id": "o", "rank": 0.5, "meta": '{"a":1}'}],
        "search_meta": None,
        "user_id": "u",
        "created_at": 1_700_000_000,
        "received_at_ms": 1_700_000_000_123,
    }
    newest = {**old, "payload_filter": None, "sort_by": None}

    alone = codec.decode(_written_with("clickstream.SessionRegistered@1.avsc", 1, old))
    grouped = codec.decode(
        _written_with("clickstream.SessionRegisteredBatch@23.avsc", 23, {"requests": [old, old]})
    )

    assert (alone.name, alone.record) == ("clickstream.SessionRegistered", newest)
    assert (grouped.name, grouped.record) == (
        "clickstream.SessionRegisteredBatch",
        {"requests": [newest, newest]},
    )
    sorted_by = {"field": "price", "order": "desc", "force_not_payload": False}
    current = {
        **newest,
        "payload_filter": '{"query":{"term":{"field":"brand","value":"acme"}}}',
        "sort_by": sorted_by,
    }
    assert codec.decode(codec.encode("clickstream.SessionRegistered", current)).record == current


def test_release_reports_and_announcements_from_before_digests_read_with_none(
    codec: AvroCodec,
) -> None:
    counts = {"session_count": 3, "event_count": 5, "repeat_session_count": 1}
    report = {
        "batch_id": "b",
        "release_id": "r",
        "partition": 2,
        **counts,
        "deferred_session_count": 0,
    }
    completed = {
        **report,
        "requested_at_ms": 1,
        "sessions_offset": 10,
        "events_offset": 20,
    }
    del completed["partition"]
    table_value = {"partition": 2, "pending": [], "releases": [completed]}
    announcement = {
        "batch_id": "b",
        "release_id": "r",
        "requested_at_ms": 1,
        "released_at_ms": 2,
        **counts,
    }

    read = [
        codec.decode(_written_with(f"clickstream.{name}@{schema_id}.avsc", schema_id, record))
        for name, schema_id, record in (
            ("PartitionReleased", 7, report),
            ("PartitionReleases", 15, table_value),
            ("BatchReleased", 8, announcement),
        )
    ]

    assert [decoded.record for decoded in read] == [
        {**report, "content_digest": None},
        {**table_value, "releases": [{**completed, "content_digest": None}]},
        {**announcement, "content_digest": None},
    ]

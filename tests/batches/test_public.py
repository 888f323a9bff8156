"""A stored session as the API shows it: a batch document and a table entry alike."""

from __future__ import annotations

from typing import Any

from batches.public import public_session


def _event(event_id: str, meta: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "object_id": "o1",
        "event_type": "click",
        "created_at": 1_700_000_000,
        "meta": meta,
        "received_at_ms": 1_700_000_000_123,
        **extra,
    }


def _session(**extra: Any) -> dict[str, Any]:
    return {
        "session_id": "s1",
        "search_query": "q",
        "search_results": [{"object_id": "o1", "rank": 0.5, "meta": '{"a":[1,null]}'}],
        "search_meta": None,
        "payload_filter": None,
        "sort_by": None,
        "user_id": "u1",
        "created_at": 1_700_000_000,
        "is_irrelevant": False,
        **extra,
    }


def test_a_batch_document_shows_its_number_repeat_fields_and_decoded_meta() -> None:
    doc = _session(
        session_number=3,
        is_repeat=True,
        previous_batch_id="b" * 24,
        event_count=2,
        new_event_count=1,
        events=[_event("e1", '{"x":1}', is_new=False), _event("e2", None, is_new=True)],
    )

    shown = public_session(doc)

    assert list(shown)[0] == "session_number"
    assert shown["search_results"] == [{"object_id": "o1", "rank": 0.5, "meta": {"a": [1, None]}}]
    assert shown["events"] == [
        {
            "event_id": "e1",
            "object_id": "o1",
            "event_type": "click",
            "created_at": 1_700_000_000,
            "meta": {"x": 1},
            "is_new": False,
        },
        {
            "event_id": "e2",
            "object_id": "o1",
            "event_type": "click",
            "created_at": 1_700_000_000,
            "meta": None,
            "is_new": True,
        },
    ]
    assert (shown["is_repeat"], shown["previous_batch_id"], shown["new_event_count"]) == (
        True,
        "b" * 24,
        1,
    )


def test_a_table_entry_has_no_batch_fields_and_keeps_received_at_and_offset_to_itself() -> None:
    doc = _session(
        event_count=2, events=[_event("e1", None, offset=7), _event("e2", None, offset=8)]
    )

    shown = public_session(doc, events_limit=1)

    assert "session_number" not in shown
    assert "is_repeat" not in shown
    assert shown["event_count"] == 2, "counts every event, shows events_limit of them"
    assert [set(event) for event in shown["events"]] == [
        {"event_id", "object_id", "event_type", "created_at", "meta"}
    ]

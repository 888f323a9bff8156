"""Release cuts decided from offsets alone: the rules, table entry by table entry."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from stream_app import join, releases
from stream_app.releases import MarkerOutcome

BATCH = "65844a671089823652b83d43"


def _session(
    session_id: str,
    registered_at: int | None,
    events: list[int],
    *,
    partition: int = 0,
    active_ms: int = 1_000,
) -> dict[str, Any]:
    state = join.new_state(session_id, partition)
    for offset in events:
        join.add_events(
            state,
            [
                {
                    "event_id": f"e{offset}",
                    "object_id": "o",
                    "event_type": "click",
                    "created_at": 1,
                    "meta": None,
                }
            ],
            active_ms,
            offset,
        )
    if registered_at is not None:
        join.register(
            state,
            {
                "session_id": session_id,
                "search_query": "q",
                "search_results": [],
                "search_meta": None,
                "user_id": None,
                "created_at": 1,
                "received_at_ms": active_ms,
            },
            registered_at,
        )
    return state


def _marker(
    batch_id: str = BATCH, requested_at_ms: int = 10_000, min_idle: int = 0
) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "release_id": "r",
        "requested_at_ms": requested_at_ms,
        "min_idle_seconds": min_idle,
    }


def _cut(
    state: dict[str, Any], sessions_offset: int, events_offset: int, **marker: Any
) -> releases.Cut:
    first, _ = releases.on_marker(state, _marker(**marker), releases.SESSIONS, sessions_offset)
    outcome, cut = releases.on_marker(state, _marker(**marker), releases.EVENTS, events_offset)
    assert first is MarkerOutcome.WAITING
    assert outcome is MarkerOutcome.COMPLETE
    assert cut is not None
    return cut


def test_a_cut_needs_the_marker_of_both_topics_and_keeps_the_first_position() -> None:
    state = releases.new_partition_state(0)

    assert releases.on_marker(state, _marker(), releases.EVENTS, 7) == (MarkerOutcome.WAITING, None)
    assert releases.on_marker(state, _marker(), releases.EVENTS, 9) == (MarkerOutcome.WAITING, None)
    outcome, cut = releases.on_marker(state, _marker(), releases.SESSIONS, 4)

    assert outcome is MarkerOutcome.COMPLETE
    assert cut is not None
    assert (cut["sessions_offset"], cut["events_offset"]) == (4, 7)


def test_only_what_lies_before_the_markers_is_released() -> None:
    state = releases.new_partition_state(0)
    cut = _cut(state, sessions_offset=3, events_offset=5)
    sessions = [
        _session("in", 1, [0, 2, 6]),  # the event at offset 6 came after the marker
        _session("late", 3, [1]),  # registered at the marker's offset: after it
        _session("waiting", None, [3]),  # events only: not registered
    ]

    selection = releases.select(cut, sessions)

    assert [
        (i.state["session_id"], [e["offset"] for e in i.events]) for i in selection.included
    ] == [("in", [0, 2])]


def test_the_next_release_takes_new_sessions_and_repeats_sessions_with_new_events() -> None:
    state = releases.new_partition_state(0)
    first_cut = _cut(state, sessions_offset=3, events_offset=5)
    returning, quiet = _session("returning", 0, [1]), _session("quiet", 1, [2])
    first = releases.select(first_cut, [returning, quiet])
    releases.record_release(state, first_cut, first, history=10)
    join.add_events(returning, [{**returning["events"][0], "event_id": "new"}], 1_000, 8)
    newcomer = _session("newcomer", 4, [9])

    second_cut = _cut(state, sessions_offset=6, events_offset=12, batch_id="b2" * 12)
    second = releases.select(second_cut, [returning, quiet, newcomer])

    assert [(i.state["session_id"], i.is_repeat, len(i.events)) for i in second.included] == [
        ("returning", True, 2),
        ("newcomer", False, 1),
    ]


def test_min_idle_defers_active_sessions_to_the_next_release_once() -> None:
    state = releases.new_partition_state(0)
    idle = _session("idle", 0, [1], active_ms=1_000)
    active = _session("active", 1, [2], active_ms=9_500)
    cut = _cut(state, sessions_offset=3, events_offset=5, requested_at_ms=10_000, min_idle=2)

    first = releases.select(cut, [idle, active])
    releases.record_release(state, cut, first, history=10)
    second_cut = _cut(
        state, sessions_offset=4, events_offset=6, batch_id="b2" * 12, requested_at_ms=20_000
    )
    second = releases.select(second_cut, [idle, active])
    releases.record_release(state, second_cut, second, history=10)

    assert [i.state["session_id"] for i in first.included] == ["idle"]
    assert first.deferred == [{"session_id": "active", "released_before": False}]
    assert [(i.state["session_id"], i.is_repeat) for i in second.included] == [("active", False)]
    assert state["deferred"] == []


def test_a_replayed_marker_gives_the_same_part_with_the_same_numbers() -> None:
    state = releases.new_partition_state(2)
    sessions = [_session(f"s{n}", n, [10 + n], partition=2) for n in range(5)]
    cut = _cut(state, sessions_offset=5, events_offset=20)
    selection = releases.select(cut, sessions)
    releases.record_release(state, cut, selection, history=10)
    batch_id = ObjectId(BATCH)
    written = [
        releases.batch_session_document(batch_id, cut, item, releases.session_number(rank, 2, 6))
        for rank, item in enumerate(selection.included)
    ]
    join.add_events(sessions[0], [{**sessions[0]["events"][0], "event_id": "x"}], 1_000, 30)

    outcome, replayed_cut = releases.on_marker(state, _marker(), releases.SESSIONS, 5)
    assert outcome is MarkerOutcome.REPLAY
    assert replayed_cut is not None
    again = releases.select(replayed_cut, sessions)
    rewritten = [
        releases.batch_session_document(
            batch_id, replayed_cut, item, releases.session_number(rank, 2, 6)
        )
        for rank, item in enumerate(again.included)
    ]

    assert rewritten == written
    assert [d["session_number"] for d in written] == [3, 9, 15, 21, 27]


def test_a_marker_older_than_every_remembered_release_is_stale() -> None:
    state = releases.new_partition_state(0)
    for n in range(3):
        cut = _cut(
            state,
            sessions_offset=n + 1,
            events_offset=n + 1,
            batch_id=f"{n:024d}",
            requested_at_ms=10_000 * (n + 1),
        )
        releases.record_release(state, cut, releases.Selection(), history=2)

    outcome, _ = releases.on_marker(
        state, _marker(batch_id="f" * 24, requested_at_ms=5), releases.SESSIONS, 9
    )

    assert outcome is MarkerOutcome.STALE
    assert [c["batch_id"] for c in state["releases"]] == [f"{1:024d}", f"{2:024d}"]


def test_registration_rules() -> None:
    state = join.new_state("s", 0)
    record = {
        "session_id": "s",
        "search_query": "q",
        "search_results": [],
        "search_meta": None,
        "user_id": "u",
        "created_at": 1,
        "received_at_ms": 1,
    }

    assert join.register(state, record, 3) is join.Registered.NEW
    assert join.register(state, {**record, "created_at": 2}, 4) is join.Registered.DUPLICATE
    assert join.register(state, {**record, "user_id": "other"}, 5) is join.Registered.CONFLICT
    assert join.conflicting_fields(state, {**record, "user_id": "other"}) == ["user_id"]
    assert state["registration"]["offset"] == 3

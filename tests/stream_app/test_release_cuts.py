"""The join and the release cuts, as pure functions: entry by entry, piece by piece."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from batches.documents import session_documents
from stream_app import join, releases
from stream_app.releases import MarkerOutcome

BATCH = "65844a671089823652b83d43"
BATCH_2 = "65844a671089823652b83d44"


class Partition:
    """One partition's table values, as the agent keeps them (entries and pieces)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.entries: dict[str, join.SessionEntry] = {}
        self.pieces: dict[str, join.EventPiece] = {}
        self.state = releases.new_partition_state(partition)

    def reader(self, session_id: str) -> Any:
        return lambda index: self.pieces.get(join.piece_key(session_id, index))

    def register(self, session_id: str, offset: int, received_at_ms: int = 1_000) -> None:
        entry = self.entries.get(session_id) or join.new_entry(session_id, self.partition)
        outcome, entry = join.register(entry, _registration(session_id, received_at_ms), offset)
        assert outcome is join.Registered.NEW
        self.entries[session_id] = entry

    def add(
        self, session_id: str, offset: int, *event_ids: str, received_at_ms: int = 1_000
    ) -> int:
        entry = self.entries.get(session_id) or join.new_entry(session_id, self.partition)
        known = {e["event_id"] for e in join.events_of(entry, self.reader(session_id))}
        last = self.pieces.get(join.piece_key(session_id, entry["piece_count"] - 1))
        events = [_event(event_id) for event_id in event_ids]
        appended = join.append_events(entry, last, known, events, received_at_ms, offset)
        if appended is None:
            return 0
        for index, piece in appended.pieces.items():
            self.pieces[join.piece_key(session_id, index)] = piece
        self.entries[session_id] = appended.entry
        return len(appended.new_ids)

    def count_before(self, entry: join.SessionEntry, offset: int) -> int:
        return join.count_before(entry, self.reader(entry["session_id"]), offset)

    def cut(
        self, sessions_offset: int, events_offset: int, **marker: Any
    ) -> tuple[releases.Cut, releases.Selection]:
        first, self.state, _ = releases.on_marker(
            self.state, _marker(**marker), releases.SESSIONS, sessions_offset
        )
        outcome, self.state, cut = releases.on_marker(
            self.state, _marker(**marker), releases.EVENTS, events_offset
        )
        assert first is MarkerOutcome.WAITING
        assert outcome is MarkerOutcome.COMPLETE
        assert cut is not None
        return cut, self.select(cut)

    def select(self, cut: releases.Cut) -> releases.Selection:
        return releases.select(cut, list(self.entries.values()), self.reader)

    def documents(self, cut: releases.Cut, selection: releases.Selection) -> list[dict[str, Any]]:
        out = []
        for rank, item in enumerate(selection.included):
            number = releases.session_number(rank, self.partition, 6)
            events = list(join.events_of(item.entry, self.reader(item.entry["session_id"])))
            copy = releases.session_copy(
                ObjectId(cut["batch_id"]), cut, item, number, events[: item.event_count]
            )
            head, chunks = session_documents(copy)
            assert not chunks
            out.append(dict(head))
        return out

    def complete(self, cut: releases.Cut, selection: releases.Selection) -> None:
        for item in selection.included:
            marked = releases.mark_released(cut, item)
            if marked is not None:
                self.entries[item.entry["session_id"]] = marked
        counts = {
            "session_count": len(selection.included),
            "event_count": sum(i.event_count for i in selection.included),
            "repeat_session_count": selection.repeat_count,
            "deferred_session_count": selection.deferred,
        }
        self.state = releases.record_release(self.state, cut, counts, history=10)


def _registration(session_id: str, received_at_ms: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "search_query": "q",
        "search_results": [],
        "search_meta": None,
        "user_id": "u",
        "created_at": 1,
        "received_at_ms": received_at_ms,
    }


def _event(event_id: str, meta: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "object_id": "o",
        "event_type": "click",
        "created_at": 1,
        "meta": meta,
    }


def _marker(
    batch_id: str = BATCH, requested_at_ms: int = 10_000, min_idle: int = 0
) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "release_id": "r",
        "requested_at_ms": requested_at_ms,
        "min_idle_seconds": min_idle,
    }


def test_a_cut_needs_the_marker_of_both_topics_and_keeps_the_first_position() -> None:
    state = releases.new_partition_state(0)

    outcome, after_first, _ = releases.on_marker(state, _marker(), releases.EVENTS, 7)
    assert outcome is MarkerOutcome.WAITING
    outcome, after_repeat, _ = releases.on_marker(after_first, _marker(), releases.EVENTS, 9)
    assert outcome is MarkerOutcome.WAITING
    outcome, _, cut = releases.on_marker(after_repeat, _marker(), releases.SESSIONS, 4)

    assert outcome is MarkerOutcome.COMPLETE
    assert cut is not None
    assert (cut["sessions_offset"], cut["events_offset"]) == (4, 7)
    assert state == releases.new_partition_state(0), "the given state is left as it was"


def test_only_what_lies_before_the_markers_is_released() -> None:
    partition = Partition()
    partition.register("in", 1)
    partition.add("in", 0, "a")
    partition.add("in", 2, "b")
    partition.add("in", 6, "c")  # after the events marker
    partition.register("late", 3)  # at the sessions marker's offset: after it
    partition.add("late", 1, "d")
    partition.add("waiting", 3, "e")  # events only: not registered

    cut, selection = partition.cut(sessions_offset=3, events_offset=5)

    [doc] = partition.documents(cut, selection)
    assert doc["session_id"] == "in"
    assert [e["event_id"] for e in doc["events"]] == ["a", "b"]
    assert (doc["is_repeat"], doc["new_event_count"]) == (False, 2)


def test_the_next_release_repeats_a_session_with_new_events_and_marks_them_new() -> None:
    partition = Partition()
    partition.register("returning", 0)
    partition.add("returning", 1, "old")
    partition.register("quiet", 1)
    partition.add("quiet", 2, "q")
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)
    partition.complete(cut, selection)
    partition.add("returning", 8, "new")
    partition.register("newcomer", 4)
    partition.add("newcomer", 9, "n")

    second_cut, second = partition.cut(sessions_offset=6, events_offset=12, batch_id=BATCH_2)
    docs = partition.documents(second_cut, second)

    assert [(d["session_id"], d["is_repeat"], d["previous_batch_id"]) for d in docs] == [
        ("returning", True, BATCH),
        ("newcomer", False, None),
    ]
    returning = docs[0]
    assert [(e["event_id"], e["is_new"]) for e in returning["events"]] == [
        ("old", False),
        ("new", True),
    ], "the whole history goes again, the new events marked"
    assert (returning["event_count"], returning["new_event_count"]) == (2, 1)


def test_min_idle_leaves_active_sessions_untouched_for_the_next_release() -> None:
    partition = Partition()
    partition.register("idle", 0, received_at_ms=1_000)
    partition.add("idle", 1, "i", received_at_ms=1_000)
    partition.register("active", 1, received_at_ms=9_500)
    partition.add("active", 2, "a", received_at_ms=9_500)

    cut, first = partition.cut(sessions_offset=3, events_offset=5, min_idle=2)
    partition.complete(cut, first)
    second_cut, second = partition.cut(
        sessions_offset=4, events_offset=6, batch_id=BATCH_2, requested_at_ms=20_000
    )

    assert [i.entry["session_id"] for i in first.included] == ["idle"]
    assert first.deferred == 1
    assert [(i.entry["session_id"], i.is_repeat) for i in second.included] == [("active", False)]


def test_min_idle_judges_by_what_lies_below_the_cut_however_far_the_worker_has_read() -> None:
    partition = Partition()
    partition.register("s", 0, received_at_ms=1_000)
    partition.add("s", 1, "before the cut", received_at_ms=1_000)
    cut, read_to_the_cut = partition.cut(sessions_offset=3, events_offset=5, min_idle=2)
    partition.add("s", 7, "after the cut", received_at_ms=9_900)  # read before a replay

    assert [i.entry["session_id"] for i in read_to_the_cut.included] == ["s"]
    assert [i.entry["session_id"] for i in partition.select(cut).included] == ["s"]


def test_a_marker_replayed_after_a_crash_mid_release_gives_the_same_part() -> None:
    partition = Partition(partition=2)
    for n in range(5):
        partition.register(f"s{n}", n)
        partition.add(f"s{n}", 10 + n, f"e{n}")
    cut, selection = partition.cut(sessions_offset=5, events_offset=20)
    written = partition.documents(cut, selection)
    # The crash: two sessions were marked, the partition's state was not written.
    for item in selection.included[:2]:
        marked = releases.mark_released(cut, item)
        assert marked is not None
        partition.entries[item.entry["session_id"]] = marked
    partition.add("s0", 30, "after the marker")

    again = partition.select(cut)

    assert partition.documents(cut, again) == written
    assert [d["session_number"] for d in written] == [3, 9, 15, 21, 27]


def test_a_marker_of_a_completed_release_reports_the_same_part_again() -> None:
    partition = Partition()
    partition.register("s", 0)
    partition.add("s", 1, "e")
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)
    partition.complete(cut, selection)

    outcome, state, completed = releases.on_marker(
        partition.state, _marker(), releases.SESSIONS, 40
    )

    assert outcome is MarkerOutcome.REPLAY
    assert state == partition.state
    assert completed is not None
    assert (completed["session_count"], completed["event_count"]) == (1, 1)


def test_a_marker_older_than_every_remembered_release_is_stale() -> None:
    state = releases.new_partition_state(0)
    for n in range(3):
        _, state, _ = releases.on_marker(
            state, _marker(f"{n:024d}", 10_000 * (n + 1)), releases.SESSIONS, n
        )
        _, state, cut = releases.on_marker(
            state, _marker(f"{n:024d}", 10_000 * (n + 1)), releases.EVENTS, n
        )
        assert cut is not None
        counts = dict.fromkeys(
            ("session_count", "event_count", "repeat_session_count", "deferred_session_count"),
            0,
        )
        state = releases.record_release(state, cut, counts, history=2)

    outcome, _, _ = releases.on_marker(
        state, _marker(batch_id="f" * 24, requested_at_ms=5), releases.SESSIONS, 9
    )

    assert outcome is MarkerOutcome.STALE
    assert [c["batch_id"] for c in state["releases"]] == [f"{1:024d}", f"{2:024d}"]


def test_events_live_in_bounded_pieces_and_are_deduplicated_across_them() -> None:
    partition = Partition()
    partition.register("big", 0)
    meta = '{"padding":"' + "x" * 600 + '"}'
    entry = partition.entries["big"]
    offset = 0
    for request in range(20):  # 20 requests of 100 events of about 700 bytes
        known = {e["event_id"] for e in join.events_of(entry, partition.reader("big"))}
        last = partition.pieces.get(join.piece_key("big", entry["piece_count"] - 1))
        events = [_event(f"r{request}e{n}", meta) for n in range(100)]
        appended = join.append_events(entry, last, known, events, 1_000, offset)
        assert appended is not None
        for index, piece in appended.pieces.items():
            partition.pieces[join.piece_key("big", index)] = piece
        entry = partition.entries["big"] = appended.entry
        offset += 1

    assert entry["event_count"] == 2000
    sizes = [sum(join.event_size(e) for e in p["events"]) for p in partition.pieces.values()]
    assert len(sizes) == entry["piece_count"] > 1
    assert max(sizes) <= join.PIECE_BYTES
    assert partition.add("big", 99, "r3e7", "r19e99", "fresh") == 1, "only the new id is kept"
    assert partition.count_before(partition.entries["big"], 5) == 500
    events = list(join.events_of(partition.entries["big"], partition.reader("big")))
    assert [e["event_id"] for e in events[:2]] == ["r0e0", "r0e1"]
    assert events[-1]["event_id"] == "fresh"


def test_a_session_released_and_quiet_is_retired_and_comes_back_from_its_copy() -> None:
    partition = Partition()
    partition.register("s", 0, received_at_ms=1_000)
    partition.add("s", 1, "e", received_at_ms=1_000)
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)

    assert not join.is_retired(partition.entries["s"], 10_000, 5_000), "not released yet"
    partition.complete(cut, selection)
    assert not join.is_retired(partition.entries["s"], 5_000, 5_000), "not quiet long enough"
    assert join.is_retired(partition.entries["s"], 6_000, 5_000)

    [copy] = partition.documents(cut, selection)
    # Retired: the tables forget it. Events for it then wait for a registration, like any
    # session's events read before their registration; once the wait is over, they join
    # the released copy.
    partition.entries, partition.pieces = {}, {}
    partition.add("s", 8, "e", "later", received_at_ms=50_000)
    waiting = partition.entries["s"]
    events = list(join.events_of(waiting, partition.reader("s")))
    revived = join.revived(waiting, events, copy)
    assert revived.new_ids == ["later"], "the old event sent again is a duplicate"
    partition.entries = {"s": revived.entry}
    partition.pieces = {join.piece_key("s", i): piece for i, piece in revived.pieces.items()}
    assert partition.add("s", 10, "e", received_at_ms=60_000) == 0, "and stays one"
    later_cut, later = partition.cut(sessions_offset=4, events_offset=12, batch_id=BATCH_2)

    [doc] = partition.documents(later_cut, later)
    assert (doc["is_repeat"], doc["previous_batch_id"]) == (True, BATCH)
    assert [(e["event_id"], e["is_new"]) for e in doc["events"]] == [
        ("e", False),
        ("later", True),
    ]
    assert (doc["event_count"], doc["new_event_count"]) == (2, 1)
    assert doc["search_query"] == "q"


def test_registration_rules() -> None:
    entry = join.new_entry("s", 0)
    record = _registration("s", 1)

    outcome, registered = join.register(entry, record, 3)
    assert outcome is join.Registered.NEW
    assert join.register(registered, {**record, "created_at": 2}, 4)[0] is join.Registered.DUPLICATE
    assert join.register(registered, {**record, "user_id": "other"}, 5)[0] is (
        join.Registered.CONFLICT
    )
    assert join.conflicting_fields(registered, {**record, "user_id": "other"}) == ["user_id"]
    assert registered["registration"]["offset"] == 3
    assert entry["registration"] is None, "the given entry is left as it was"


def test_an_entry_that_lost_a_write_its_pieces_have_is_recounted_from_them() -> None:
    partition = Partition()
    partition.register("s", 0)
    partition.add("s", 1, "a", "b")
    before_crash = partition.entries["s"]
    partition.add("s", 2, "c")  # the crash keeps this piece write, loses the entry's

    recounted = join.reconciled(before_crash, partition.reader("s"))

    assert recounted["event_count"] == 3
    assert recounted["last_event_offset"] == 2
    assert join.reconciled(recounted, partition.reader("s")) is recounted, "true: as it is"
    partition.entries["s"] = recounted
    assert partition.add("s", 2, "c") == 0, "the replayed message adds nothing"
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)
    [doc] = partition.documents(cut, selection)
    assert [e["event_id"] for e in doc["events"]] == ["a", "b", "c"], "none of them lost"


def test_a_release_mark_lost_in_a_crash_is_made_again_unless_a_later_one_came() -> None:
    partition = Partition()
    partition.register("s", 0)
    partition.add("s", 1, "a")
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)
    unmarked = partition.entries["s"]
    partition.complete(cut, selection)
    [completed] = partition.state["releases"]

    again = releases.repaired_mark(partition.state, completed, unmarked, 1)

    assert again is not None
    assert again["released"] == partition.entries["s"]["released"]
    assert releases.repaired_mark(partition.state, completed, again, 1) is None
    partition.add("s", 7, "b")
    second_cut, second = partition.cut(sessions_offset=4, events_offset=9, batch_id=BATCH_2)
    partition.complete(second_cut, second)
    later = partition.entries["s"]
    assert releases.repaired_mark(partition.state, completed, later, 1) is None

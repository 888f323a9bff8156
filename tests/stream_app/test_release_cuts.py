"""The join and the release cuts on a partition's real state (in memory): messages handled
by the worker's handlers, their changes committed or dropped as a batch would be, releases
cut and their documents built as the part writer builds them."""

from __future__ import annotations

from typing import Any, cast

from bson import ObjectId
from confluent_kafka import Message

from batches.documents import session_documents
from clickstream.settings import Settings
from schemas import AvroCodec, SchemaName, Topics
from stream_app import join, releases
from stream_app.changelog import encode_changes
from stream_app.control_auth import ControlAuth
from stream_app.handlers import Handlers
from stream_app.releases import MarkerOutcome
from stream_app.state.memory import MemoryPartition
from stream_app.state.partition import PartitionState

BATCH = "65844a671089823652b83d43"
BATCH_2 = "65844a671089823652b83d44"
CODEC = AvroCodec()
NAMES = Topics()
SETTINGS = Settings(control_secret=["test"])  # type: ignore[arg-type]
# The handlers of the join; releases are cut below without MongoDB.
HANDLERS = Handlers(
    SETTINGS,
    NAMES,
    CODEC,
    ControlAuth.from_settings(SETTINGS),
    None,
    None,
    None,  # type: ignore[arg-type]
)


class Partition:
    """One partition's state, fed messages as the worker would be."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.state = PartitionState(MemoryPartition(partition))
        self._position = 0

    def _handle(self, topic: str, offset: int, schema: str, record: dict[str, Any]) -> None:
        message = Message(
            topic=topic,
            partition=self.partition,
            offset=offset,
            key=record["session_id"].encode(),
            value=CODEC.encode(schema, record),
        )
        out: list[Any] = []
        HANDLERS.handle(self.state, message, out)
        assert out == [], "nothing dead-lettered"

    def commit(self) -> None:
        """The batch's changes committed, as after the changelog transaction."""
        records = encode_changes(CODEC, self.state.staged())  # as the changelog gets them
        self._position += len(records)
        self.state.committed(self._position)

    def entry(self, session_id: str) -> join.SessionEntry:
        found = self.state.entry(session_id)
        assert found is not None
        return found

    def reader(self, session_id: str) -> Any:
        return self.state.piece_reader(session_id)

    def register(self, session_id: str, offset: int, received_at_ms: int = 1_000) -> None:
        record = _registration(session_id, received_at_ms)
        self._handle(NAMES.sessions, offset, SchemaName.SESSION_REGISTERED, record)
        self.commit()

    def add(
        self, session_id: str, offset: int, *event_ids: str, received_at_ms: int = 1_000
    ) -> int:
        """Events in one message; how many were new."""
        before = self.state.entry(session_id)
        record = {
            "session_id": session_id,
            "events": [_event(event_id) for event_id in event_ids],
            "received_at_ms": received_at_ms,
        }
        self._handle(NAMES.events, offset, SchemaName.SESSION_EVENTS, record)
        self.commit()
        after = self.entry(session_id)
        return after["event_count"] - (before["event_count"] if before else 0)

    def count_before(self, entry: join.SessionEntry, offset: int) -> int:
        return join.count_before(entry, self.reader(entry["session_id"]), offset)

    def cut(
        self, sessions_offset: int, events_offset: int, **marker: Any
    ) -> tuple[releases.Cut, releases.Selection]:
        state = self.state.releases()
        first, state, _ = releases.on_marker(
            state, _marker(**marker), releases.SESSIONS, sessions_offset
        )
        outcome, state, cut = releases.on_marker(
            state, _marker(**marker), releases.EVENTS, events_offset
        )
        self.state.put_releases(state)
        self.commit()
        assert first is MarkerOutcome.WAITING
        assert outcome is MarkerOutcome.COMPLETE
        assert cut is not None
        return cast("releases.Cut", cut), self.select(cast("releases.Cut", cut))

    def select(self, cut: releases.Cut) -> releases.Selection:
        return releases.select(cut, self.state.dirty_entries(), self.reader)

    def documents(self, cut: releases.Cut, selection: releases.Selection) -> list[dict[str, Any]]:
        out = []
        for rank, item in enumerate(selection.included):
            number = releases.session_number(rank, self.partition, 6)
            events = list(join.events_of(item.entry, self.reader(item.session_id)))
            registration = self.state.registration(item.session_id)
            assert registration is not None
            copy = releases.session_copy(
                ObjectId(cut["batch_id"]),
                cut,
                item,
                number,
                registration,
                events[: item.event_count],
            )
            head, chunks = session_documents(copy)
            assert not chunks
            out.append(dict(head))
        return out

    def mark(self, cut: releases.Cut, selection: releases.Selection) -> None:
        """Stage what completing the part changes (not committed)."""
        for item in selection.included:
            marked = releases.mark_released(cut, item)
            if marked is not None:
                self.state.put_entry(marked)
        counts: releases.PartCounts = {
            "session_count": len(selection.included),
            "event_count": sum(i.event_count for i in selection.included),
            "repeat_session_count": selection.repeat_count,
            "deferred_session_count": selection.deferred,
        }
        self.state.put_releases(
            releases.record_release(self.state.releases(), cut, counts, history=10)
        )

    def complete(self, cut: releases.Cut, selection: releases.Selection) -> None:
        self.mark(cut, selection)
        self.commit()


def _registration(session_id: str, received_at_ms: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "search_query": "q",
        "search_results": [],
        "search_meta": None,
        "user_id": "u",
        "created_at": 1,
        "received_at_ms": received_at_ms,
        "payload_filter": None,
        "sort_by": None,
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
    # The crash: the sessions were marked, the batch's transaction never committed.
    partition.mark(cut, selection)
    partition.state.drop_staged()
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
        partition.state.releases(), _marker(), releases.SESSIONS, 40
    )

    assert outcome is MarkerOutcome.REPLAY
    assert state == partition.state.releases()
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
    for request in range(20):  # 20 requests of 100 events of about 700 bytes
        record = {
            "session_id": "big",
            "events": [_event(f"r{request}e{n}", meta) for n in range(100)],
            "received_at_ms": 1_000,
        }
        partition._handle(NAMES.events, request, SchemaName.SESSION_EVENTS, record)
        partition.commit()

    entry = partition.entry("big")
    assert entry["event_count"] == 2000
    pieces = [partition.state.piece("big", i) for i in range(entry["piece_count"])]
    sizes = [sum(join.event_size(e) for e in p["events"]) for p in pieces if p]
    assert len(sizes) == entry["piece_count"] > 1
    assert max(sizes) <= join.PIECE_BYTES
    assert partition.add("big", 99, "r3e7", "r19e99", "fresh") == 1, "only the new id is kept"
    assert partition.count_before(partition.entry("big"), 5) == 500
    events = list(join.events_of(partition.entry("big"), partition.reader("big")))
    assert [e["event_id"] for e in events[:2]] == ["r0e0", "r0e1"]
    assert events[-1]["event_id"] == "fresh"


def test_a_session_released_and_quiet_is_retired_and_comes_back_from_its_copy() -> None:
    partition = Partition()
    partition.register("s", 0, received_at_ms=1_000)
    partition.add("s", 1, "e", received_at_ms=1_000)
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)

    assert not join.is_retired(partition.entry("s"), 10_000, 5_000), "not released yet"
    partition.complete(cut, selection)
    assert not join.is_retired(partition.entry("s"), 5_000, 5_000), "not quiet long enough"
    assert join.is_retired(partition.entry("s"), 6_000, 5_000)
    assert join.watched(partition.entry("s")) == (join.QUIET, 1_000)
    assert partition.state.watched_entries({join.QUIET: 999}) == []
    quiet = partition.state.watched_entries({join.QUIET: 1_000, join.WAITING: 10**12})
    assert [e["session_id"] for e in quiet] == ["s"], "a tick finds it by its quiet time"

    [copy] = partition.documents(cut, selection)
    # Retired: the state forgets it. Events for it then wait for a registration, like any
    # session's events read before their registration; once the wait is over, they join
    # the released copy.
    partition.state.remove_session(partition.entry("s"))
    partition.commit()
    assert partition.state.entry("s") is None
    partition.add("s", 8, "e", "later", received_at_ms=50_000)
    waiting = partition.entry("s")
    events = list(join.events_of(waiting, partition.reader("s")))
    revived = join.revived(waiting, events, copy)
    assert revived.appended.new_ids == ["later"], "the old event sent again is a duplicate"
    partition.state.put_registration("s", revived.registration)
    partition.state.put_appended(revived.appended)
    partition.state.forget_known_ids("s")
    partition.commit()
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
    record = cast("Any", _registration("s", 1))

    outcome, registered, stored = join.register(entry, None, record, 3)
    assert outcome is join.Registered.NEW
    assert stored is not None
    assert stored["offset"] == 3
    assert registered["registered_offset"] == 3
    again = {**record, "created_at": 2}
    assert join.register(registered, stored, again, 4)[0] is join.Registered.DUPLICATE
    other = {**record, "user_id": "other"}
    assert join.register(registered, stored, other, 5)[0] is join.Registered.CONFLICT
    assert join.conflicting_fields(stored, other) == ["user_id"]
    assert entry["registered_offset"] is None, "the given entry is left as it was"
    # What was shown is part of the session: another filter or order is another session.
    sorted_by = {**record, "sort_by": {"field": "p", "order": "asc", "force_not_payload": False}}
    assert join.register(registered, stored, sorted_by, 6)[0] is join.Registered.CONFLICT
    assert join.conflicting_fields(stored, sorted_by) == ["sort_by"]
    # A registration kept before the two fields existed is the same as one without them.
    kept_before = {k: v for k, v in stored.items() if k not in ("payload_filter", "sort_by")}
    assert join.register(registered, cast("Any", kept_before), again, 7)[0] is (
        join.Registered.DUPLICATE
    )


def test_a_batch_that_never_committed_leaves_the_state_as_it_was() -> None:
    partition = Partition()
    partition.register("s", 0)
    partition.add("s", 1, "a", "b")
    committed = partition.entry("s")
    record = {"session_id": "s", "events": [_event("c")], "received_at_ms": 2_000}
    partition._handle(NAMES.events, 2, SchemaName.SESSION_EVENTS, record)
    assert partition.entry("s")["event_count"] == 3, "the batch sees its own changes"

    partition.state.drop_staged()  # its transaction aborted

    assert partition.entry("s") == committed
    assert partition.add("s", 2, "c") == 1, "handled again, the event counts once"
    cut, selection = partition.cut(sessions_offset=3, events_offset=5)
    [doc] = partition.documents(cut, selection)
    assert [e["event_id"] for e in doc["events"]] == ["a", "b", "c"], "none of them lost"
    assert [e["session_id"] for e in partition.state.dirty_entries()] == ["s"]
    partition.complete(cut, selection)
    assert partition.state.dirty_entries() == [], "released with all it has: not dirty"

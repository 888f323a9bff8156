"""The join agent: one agent, concurrency 1, over the co-partitioned sessions and events
topics. It keeps each session's entry in the sessions table and its events in the pieces
table, writes a partition's part of a batch to MongoDB when a release's markers have been
read on both topics, retires sessions that are released and quiet, and dead-letters what
it cannot use.

Every table write happens while a message of the same partition is being processed, so it
lands in that partition of the changelog. A message is acknowledged only once it was
handled (see ``failures``); faust commits offsets only after its producer has flushed, and
MongoDB writes and reports are awaited before moving on: a crash replays messages, and
every step is idempotent under replay.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, cast

from bson import ObjectId

from schemas import MalformedMessageError, SchemaName
from stream_app import dead_letters, join, metrics, releases
from stream_app.control_auth import ControlAuth
from stream_app.tables import partition_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import faust
    from faust.types import EventT

    from batches.store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from schemas.records import (
        EventItem,
        PartitionReleased,
        PartitionTick,
        ReleaseMarker,
        SessionEvent,
        SessionEvents,
        SessionMarkedIrrelevant,
        SessionRegistered,
    )
    from stream_app.failures import FailurePolicy
    from stream_app.tables import StreamTables
    from stream_app.topics import StreamTopics

    Event = EventT[bytes]
    Handler = Callable[[dict[str, Any], Event], Awaitable[None]]

logger = logging.getLogger(__name__)

PARTITION_RELEASED = SchemaName.PARTITION_RELEASED
SESSION_EVENT = SchemaName.SESSION_EVENT
# Sessions whose event ids are kept in memory for de-duplication (derived from the pieces,
# rebuilt on demand): the active ones, without holding every id of every session.
_KNOWN_IDS_SESSIONS = 4096
# A dead letter carries the original message, unless that would pass Kafka's 1 MB limit.
_MAX_DEAD_LETTER_VALUE_BYTES = 900 * 1024


class JoinAgent:
    """Handles each message of the source topics by its kind (its schema).

    Args:
        settings: the worker's settings.
        names: topic names.
        avro: the shared codec.
        topics: the faust topics.
        tables: the faust tables.
        store: where batches are written.
        failures: what to do when handling a message fails.
        committed: the offset committed in a topic's partition (the next one a restarted
            worker reads), None before the partition was assigned.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        avro: AvroCodec,
        topics: StreamTopics,
        tables: StreamTables,
        store: BatchStore,
        failures: FailurePolicy,
        committed: Callable[[str, int], int | None],
    ) -> None:
        self._settings = settings
        self._names = names
        self._avro = avro
        self._topics = topics
        self._sessions = tables.sessions
        self._pieces = tables.pieces
        self._partitions = tables.partitions
        self._store = store
        self._failures = failures
        self._committed = committed
        self._orphan_wait_ms = int(settings.orphan_event_wait_seconds * 1000)
        self._retention_ms = int(settings.session_retention_seconds * 1000)
        self._control = ControlAuth.from_settings(settings)
        # Derived from the tables, never changelogged; dropped on every rebalance.
        self._index: dict[int, set[str]] | None = None
        self._known_ids: OrderedDict[str, set[str]] = OrderedDict()
        self._checked: set[str] = set()  # entries found true to their pieces
        self._handlers: dict[tuple[str, str], Handler] = {
            (names.sessions, SchemaName.SESSION_REGISTERED): self._on_registered,
            (names.sessions, SchemaName.SESSION_MARKED_IRRELEVANT): self._on_irrelevant,
            (names.sessions, SchemaName.RELEASE_MARKER): self._on_sessions_marker,
            (names.sessions, SchemaName.PARTITION_TICK): self._on_tick,
            (names.events, SchemaName.SESSION_EVENTS): self._on_events,
            (names.events, SchemaName.SESSION_EVENT): self._on_event,
            (names.events, SchemaName.RELEASE_MARKER): self._on_events_marker,
        }

    async def __call__(self, stream: faust.StreamT[bytes]) -> None:
        manual = cast("faust.Stream[bytes]", stream).noack()  # acknowledged once handled
        async for event in manual.events():
            message = event.message
            where = f"topic={message.topic} partition={message.partition} offset={message.offset}"
            await self._failures.handle(functools.partial(self._handle, event), where)
            await stream.ack(event)
            metrics.handled(self._avro, message)

    def forget_derived_state(self) -> None:
        """Partitions moved: what is derived from the tables is built again when needed."""
        self._index = None
        self._known_ids.clear()
        self._checked.clear()

    async def _handle(self, event: Event) -> None:
        message = event.message
        try:
            decoded = self._avro.decode(event.value)
        except MalformedMessageError as exc:
            await self._dead_letter(
                event, dead_letters.UNDECODABLE_MESSAGE, str(exc), session_id=None
            )
            return
        handle = self._handlers.get((message.topic, decoded.name))
        if handle is None:
            await self._dead_letter(
                event,
                dead_letters.UNEXPECTED_MESSAGE,
                f"{decoded.name} does not belong on {message.topic}",
                session_id=decoded.record.get("session_id"),
            )
            return
        refusal = self._control.refusal(
            decoded.name, decoded.record, message.topic, event.value, event.headers
        )
        if refusal is not None:  # a control message not from the coordinator
            await self._dead_letter(event, refusal.reason, refusal.detail, session_id=None)
            return
        await handle(decoded.record, event)

    # -- the tables ---------------------------------------------------------------------

    def _entry(self, session_id: str, partition: int) -> join.SessionEntry:
        entry = self._stored_entry(session_id)
        return join.new_entry(session_id, partition) if entry is None else entry

    def _stored_entry(self, session_id: str) -> join.SessionEntry | None:
        """The session's entry, checked against its pieces once per rebalance (after a
        crash, one of the two may lack a write the other has)."""
        entry = self._sessions.get(session_id)
        if entry is None or session_id in self._checked:
            return entry
        true = join.reconciled(entry, self._piece_reader(session_id))
        if true is not entry:
            logger.warning(
                "session entry recounted from its pieces session=%s events=%s->%s",
                session_id,
                entry["event_count"],
                true["event_count"],
            )
            self._put_entry(true)
        self._checked.add(session_id)
        return true

    def _piece_reader(self, session_id: str) -> Callable[[int], join.EventPiece | None]:
        return lambda index: self._pieces.get(join.piece_key(session_id, index))

    def _put_entry(self, entry: join.SessionEntry) -> None:
        self._sessions[entry["session_id"]] = entry
        if self._index is not None:
            self._index.setdefault(entry["partition"], set()).add(entry["session_id"])

    def _put_appended(self, appended: join.Appended) -> None:
        """Write a session's changed pieces, then its entry (which counts them)."""
        session_id = appended.entry["session_id"]
        for index, piece in appended.pieces.items():
            self._pieces[join.piece_key(session_id, index)] = piece
        self._put_entry(appended.entry)

    def _remove_session(self, entry: join.SessionEntry) -> None:
        session_id = entry["session_id"]
        for index in range(entry["piece_count"]):
            self._pieces.pop(join.piece_key(session_id, index), None)
        del self._sessions[session_id]
        self._known_ids.pop(session_id, None)
        self._checked.discard(session_id)
        if self._index is not None:
            self._index.get(entry["partition"], set()).discard(session_id)

    def _partition_entries(self, partition: int) -> list[join.SessionEntry]:
        """The entries of one partition, through the index (built once per rebalance)."""
        if self._index is None:
            index: dict[int, set[str]] = {}
            for session_id, entry in self._sessions.items():
                index.setdefault(entry["partition"], set()).add(session_id)
            self._index = index
        entries = (self._stored_entry(sid) for sid in list(self._index.get(partition, ())))
        return [entry for entry in entries if entry is not None]

    def _known(self, entry: join.SessionEntry) -> set[str]:
        """The ids of the session's events, from the pieces unless recently used."""
        session_id = entry["session_id"]
        ids = self._known_ids.get(session_id)
        if ids is None:
            reader = self._piece_reader(session_id)
            ids = {event["event_id"] for event in join.events_of(entry, reader)}
            self._known_ids[session_id] = ids
            if len(self._known_ids) > _KNOWN_IDS_SESSIONS:
                self._known_ids.popitem(last=False)
        else:
            self._known_ids.move_to_end(session_id)
        return ids

    # -- sessions and events ------------------------------------------------------------

    # Each handler's record was decoded with the schema its handler is chosen by.

    async def _on_registered(self, record: dict[str, Any], event: Event) -> None:
        registration = cast("SessionRegistered", record)
        entry = self._entry(registration["session_id"], event.message.partition)
        outcome, registered = join.register(entry, registration, event.message.offset)
        if outcome is join.Registered.NEW:
            self._put_entry(registered)
        elif outcome is join.Registered.CONFLICT:
            fields = ", ".join(join.conflicting_fields(entry, registration))
            await self._dead_letter(
                event,
                dead_letters.CONFLICTING_REGISTRATION,
                f"session already registered with other {fields}; the first registration is kept",
                session_id=registration["session_id"],
            )

    async def _on_events(self, record: dict[str, Any], event: Event) -> None:
        message = cast("SessionEvents", record)
        await self._add_events(
            message["session_id"], message["events"], message["received_at_ms"], event
        )

    async def _on_event(self, record: dict[str, Any], event: Event) -> None:
        """One event alone: what producers of other languages may send."""
        single = cast("SessionEvent", record)
        await self._add_events(single["session_id"], [single], single["received_at_ms"], event)

    async def _add_events(
        self, session_id: str, events: list[EventItem], received_at_ms: int, event: Event
    ) -> None:
        partition, offset = event.message.partition, event.message.offset
        # A session this worker does not hold is new, or its registration is still to be
        # read (the topics are read independently, and a restart replays both): its
        # events wait for it. Those of a retired session are joined to its released copy
        # once the wait is over (see _on_tick).
        entry = self._entry(session_id, partition)
        last_piece = None
        if entry["piece_count"]:
            last_piece = self._pieces.get(join.piece_key(session_id, entry["piece_count"] - 1))
        known = self._known(entry)
        appended = join.append_events(entry, last_piece, known, events, received_at_ms, offset)
        if appended is None:
            return
        # No await from here to the cache update: the cache never disagrees with the tables.
        try:
            self._put_appended(appended)
        except BaseException:
            self._known_ids.pop(session_id, None)
            raise
        known.update(appended.new_ids)

    async def _on_irrelevant(self, record: dict[str, Any], event: Event) -> None:
        marking = cast("SessionMarkedIrrelevant", record)
        entry = self._stored_entry(marking["session_id"])
        if entry is None or entry["registration"] is None:
            await self._dead_letter(
                event,
                dead_letters.SESSION_NOT_REGISTERED,
                "cannot mark a session irrelevant before it is registered",
                session_id=marking["session_id"],
            )
            return
        marked = join.mark_irrelevant(entry, event.message.offset)
        if marked is not None:
            self._put_entry(marked)

    async def _on_tick(self, record: dict[str, Any], event: Event) -> None:
        """Dead-letter the events of sessions never registered within the wait, and retire
        sessions released with everything they have and quiet for the retention time."""
        partition = event.message.partition
        now_ms = cast("PartitionTick", record)["sent_at_ms"]
        expired = retired = revived = 0
        for entry in self._partition_entries(partition):
            if join.is_waiting_too_long(entry, now_ms, self._orphan_wait_ms):
                if await self._revive(entry):
                    revived += 1
                    continue
                await self._expire_orphan(entry, partition)
                self._remove_session(entry)
                expired += 1
            elif join.is_retired(entry, now_ms, self._retention_ms) and self._beyond_replay(
                entry, partition
            ):
                self._remove_session(entry)
                retired += 1
        if expired or retired or revived:
            logger.info(
                "sessions left the tables partition=%s orphans_expired=%s retired=%s revived=%s",
                partition,
                expired,
                retired,
                revived,
            )

    async def _revive(self, waiting: join.SessionEntry) -> bool:
        """Events that waited in vain for their session's registration: if the session was
        released before (it was retired since), they join its latest released copy and go
        into the next release as its new events. False if it never was."""
        session_id = waiting["session_id"]
        released = await asyncio.to_thread(self._store.latest_session, session_id)
        if released is None:
            return False
        events = list(join.events_of(waiting, self._piece_reader(session_id)))
        revived = join.revived(waiting, events, released)
        logger.info(
            "retired session back with new events session=%s previous_batch=%s events=%s",
            session_id,
            released["batch_id"],
            len(revived.new_ids),
        )
        # No await from here on: the tables and the caches change together.
        self._put_appended(revived)
        for index in range(revived.entry["piece_count"], waiting["piece_count"]):
            self._pieces.pop(join.piece_key(session_id, index), None)
        self._known_ids.pop(session_id, None)
        self._checked.add(session_id)
        return True

    def _beyond_replay(self, entry: join.SessionEntry, partition: int) -> bool:
        """No message of the session can be read again: each lies below the offset committed
        in its topic. A worker restarted after a crash replays what follows the committed
        offsets; a retired session's events read again would otherwise come back as new."""
        sessions = self._committed(self._names.sessions, partition)
        registration, irrelevant = entry["registration"], entry["irrelevant_offset"]
        last_session_offset = max(
            registration["offset"] if registration else -1,
            irrelevant if irrelevant is not None else -1,
        )
        if sessions is None or last_session_offset >= sessions:
            return False
        last_event_offset = entry["last_event_offset"]
        if last_event_offset is None:
            return True
        events = self._committed(self._names.events, partition)
        return events is not None and last_event_offset < events

    async def _expire_orphan(self, entry: join.SessionEntry, partition: int) -> None:
        detail = f"session not registered within {self._settings.orphan_event_wait_seconds:g} s"
        session_id = entry["session_id"]
        for stored in join.events_of(entry, self._piece_reader(session_id)):
            await self._send_dead_letter(
                reason=dead_letters.ORPHAN_EVENT_EXPIRED,
                detail=detail,
                session_id=session_id,
                topic=self._names.events,
                partition=partition,
                offset=stored["offset"],
                value=self._avro.encode(SESSION_EVENT, join.event_record(session_id, stored)),
            )

    # -- releases -----------------------------------------------------------------------

    async def _on_sessions_marker(self, record: dict[str, Any], event: Event) -> None:
        await self._on_marker(record, event, releases.SESSIONS)

    async def _on_events_marker(self, record: dict[str, Any], event: Event) -> None:
        await self._on_marker(record, event, releases.EVENTS)

    async def _on_marker(self, record: dict[str, Any], event: Event, topic: str) -> None:
        marker = cast("ReleaseMarker", record)
        partition = event.message.partition
        key = partition_key(partition)
        state = self._partitions.get(key) or releases.new_partition_state(partition)
        outcome, state, found = releases.on_marker(state, marker, topic, event.message.offset)
        logger.info(
            "release marker batch=%s partition=%s topic=%s offset=%s outcome=%s",
            marker["batch_id"],
            partition,
            topic,
            event.message.offset,
            outcome.value,
        )
        if outcome is releases.MarkerOutcome.STALE:
            return
        if outcome is releases.MarkerOutcome.WAITING:
            self._partitions[key] = state
            return
        assert found is not None  # noqa: S101 - COMPLETE and REPLAY carry one
        if outcome is releases.MarkerOutcome.REPLAY:
            # Written before: replayed after a crash, or the coordinator asks again (a lost
            # report, a healing release). Marks the crash lost are made again from what
            # MongoDB holds, and the same counts are reported again.
            completed = cast("releases.CompletedCut", found)  # REPLAY carries the release
            await self._repair_marks(state, completed, partition)
            counts: releases.PartCounts = {
                "session_count": completed["session_count"],
                "event_count": completed["event_count"],
                "repeat_session_count": completed["repeat_session_count"],
                "deferred_session_count": completed["deferred_session_count"],
            }
            await self._report(completed, partition, counts)
            return
        cut = cast("releases.Cut", found)  # COMPLETE carries the cut
        selection = releases.select(cut, self._partition_entries(partition), self._piece_reader)
        counts = await self._write_part(cut, selection, partition)
        await self._report(cut, partition, counts)
        for item in selection.included:
            marked = releases.mark_released(cut, item)
            if marked is not None:
                self._put_entry(marked)
        self._partitions[key] = releases.record_release(
            state, cut, counts, self._settings.release_history
        )

    async def _repair_marks(
        self, state: releases.PartitionReleases, cut: releases.CompletedCut, partition: int
    ) -> None:
        part = await asyncio.to_thread(
            self._store.part_sessions, ObjectId(cut["batch_id"]), partition
        )
        repaired = 0
        for doc in part:
            entry = self._stored_entry(doc["session_id"])
            marked = entry and releases.repaired_mark(state, cut, entry, doc["event_count"])
            if marked:
                self._put_entry(marked)
                repaired += 1
        if repaired:
            logger.warning(
                "release marks made again batch=%s partition=%s sessions=%s",
                cut["batch_id"],
                partition,
                repaired,
            )

    async def _write_part(
        self, cut: releases.Cut, selection: releases.Selection, partition: int
    ) -> releases.PartCounts:
        """Write this partition's sessions of the batch to MongoDB; the part's counts.

        A session MongoDB refuses to store (none should: every document is kept below its
        limit) is left out, noted on the batch and dead-lettered, and the release goes on.
        """
        batch_id = ObjectId(cut["batch_id"])
        partition_count = self._settings.topic_partitions
        copies = [
            releases.session_copy(
                batch_id,
                cut,
                item,
                releases.session_number(rank, partition, partition_count),
                list(
                    itertools.islice(
                        join.events_of(item.entry, self._piece_reader(item.entry["session_id"])),
                        item.event_count,
                    )
                ),
            )
            for rank, item in enumerate(selection.included)
        ]
        refused = await asyncio.to_thread(self._store.write_part, batch_id, copies)
        refused_ids = {r.session_id for r in refused}
        if refused:
            await asyncio.to_thread(
                self._store.record_unreleasable, batch_id, partition, sorted(refused_ids)
            )
        for item in refused:
            await self._send_dead_letter(
                reason=dead_letters.SNAPSHOT_REFUSED,
                detail=f"session not stored in batch {batch_id}: {item.reason}",
                session_id=item.session_id,
                topic=self._names.sessions,
                partition=partition,
                offset=next(
                    i.registration["offset"]
                    for i in selection.included
                    if i.entry["session_id"] == item.session_id
                ),
                value=None,
            )
        written = [i for i in selection.included if i.entry["session_id"] not in refused_ids]
        logger.info(
            "release part written batch=%s partition=%s sessions=%s deferred=%s refused=%s",
            cut["batch_id"],
            partition,
            len(written),
            selection.deferred,
            len(refused),
        )
        return {
            "session_count": len(written),
            "event_count": sum(i.event_count for i in written),
            "repeat_session_count": sum(i.is_repeat for i in written),
            "deferred_session_count": selection.deferred,
        }

    async def _report(
        self,
        cut: releases.Cut | releases.CompletedCut,
        partition: int,
        counts: releases.PartCounts,
    ) -> None:
        """Tell the release coordinator this partition's part is written; returns once Kafka
        acknowledged it (a failure is retried by the failure policy)."""
        report: PartitionReleased = {
            "batch_id": cut["batch_id"],
            "release_id": cut["release_id"],
            "partition": partition,
            **counts,
        }
        value = self._avro.encode(PARTITION_RELEASED, report)
        delivered = await self._topics.releases.send(
            key=cut["batch_id"].encode(),
            value=value,
            headers=self._control.headers(self._names.releases, value),
        )
        await delivered

    # -- dead letters -------------------------------------------------------------------

    async def _dead_letter(
        self, event: Event, reason: str, detail: str, *, session_id: str | None
    ) -> None:
        message = event.message
        await self._send_dead_letter(
            reason=reason,
            detail=detail,
            session_id=session_id,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            value=message.value,
        )

    async def _send_dead_letter(
        self, *, session_id: str | None, value: bytes | None, detail: str, **fields: Any
    ) -> None:
        """Send a dead letter and wait until Kafka acknowledged it: it is what remains of
        the input, so the message it stands for is acknowledged only after it."""
        if value is not None and len(value) > _MAX_DEAD_LETTER_VALUE_BYTES:
            detail = f"{detail} (original message of {len(value)} bytes not attached)"
            value = None
        logger.warning(
            "dead letter reason=%s session=%s detail=%s", fields["reason"], session_id, detail
        )
        encoded = dead_letters.dead_letter(
            self._avro, session_id=session_id, value=value, detail=detail, **fields
        )
        key = session_id.encode() if session_id is not None else None
        delivered = await self._topics.dead_letter.send(key=key, value=encoded)
        await delivered
        metrics.DEAD_LETTERS.labels(fields["reason"]).inc()

"""The join agent: one agent, concurrency 1, over the co-partitioned sessions and events
topics. It keeps each session with its events in the sessions table, writes a partition's
part of a batch to MongoDB when a release's markers have been read on both topics, and
dead-letters what it cannot use.

Every table write happens while a message of the same partition is being processed, so it
lands in that partition of the changelog. Offsets are committed by faust only after the
producer has flushed, and MongoDB writes are awaited before moving on: a crash replays
messages, and every step is idempotent under replay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import bson
from bson import ObjectId

from schemas import MalformedMessageError
from stream_app import dead_letters, join, releases
from stream_app.control_auth import ControlAuth
from stream_app.tables import partition_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import faust
    from faust.types import EventT

    from clickstream.batch_store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from stream_app.tables import StreamTables
    from stream_app.topics import StreamTopics

    Event = EventT[bytes]
    Handler = Callable[[dict[str, Any], Event], Awaitable[None]]

logger = logging.getLogger(__name__)

PARTITION_RELEASED = "clickstream.PartitionReleased"
# Only sessions with this many events are measured against the snapshot size limit.
_MEASURE_ABOVE_EVENTS = 1000


class JoinAgent:
    """Handles each message of the source topics by its kind (its schema).

    Args:
        settings: the worker's settings.
        names: topic names.
        avro: the shared codec.
        topics: the faust topics.
        tables: the faust tables.
        store: where batches are written.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        avro: AvroCodec,
        topics: StreamTopics,
        tables: StreamTables,
        store: BatchStore,
    ) -> None:
        self._settings = settings
        self._names = names
        self._avro = avro
        self._topics = topics
        self._sessions = tables.sessions
        self._partitions = tables.partitions
        self._store = store
        self._orphan_wait_ms = int(settings.orphan_event_wait_seconds * 1000)
        self._control = ControlAuth.from_settings(settings)
        self._handlers: dict[tuple[str, str], Handler] = {
            (names.sessions, "clickstream.SessionRegistered"): self._on_registered,
            (names.sessions, "clickstream.SessionMarkedIrrelevant"): self._on_irrelevant,
            (names.sessions, "clickstream.ReleaseMarker"): self._on_sessions_marker,
            (names.sessions, "clickstream.PartitionTick"): self._on_tick,
            (names.events, "clickstream.SessionEvents"): self._on_events,
            (names.events, "clickstream.SessionEvent"): self._on_event,
            (names.events, "clickstream.ReleaseMarker"): self._on_events_marker,
        }

    async def __call__(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            try:
                decoded = self._avro.decode(event.value)
            except MalformedMessageError as exc:
                await self._dead_letter(
                    event, dead_letters.UNDECODABLE_MESSAGE, str(exc), session_id=None
                )
                continue
            handle = self._handlers.get((message.topic, decoded.name))
            if handle is None:
                await self._dead_letter(
                    event,
                    dead_letters.UNEXPECTED_MESSAGE,
                    f"{decoded.name} does not belong on {message.topic}",
                    session_id=decoded.record.get("session_id"),
                )
                continue
            refusal = self._control.refusal(
                decoded.name, decoded.record, message.topic, event.value, event.headers
            )
            if refusal is not None:  # a forged control message changes nothing
                await self._dead_letter(event, refusal.reason, refusal.detail, session_id=None)
                continue
            await handle(decoded.record, event)

    # -- sessions and events ------------------------------------------------------------

    def _state(self, session_id: str, partition: int) -> join.SessionState:
        state = self._sessions.get(session_id)
        return join.new_state(session_id, partition) if state is None else state

    async def _on_registered(self, record: dict[str, Any], event: Event) -> None:
        message = event.message
        state = self._state(record["session_id"], message.partition)
        outcome = join.register(state, record, message.offset)
        if outcome is join.Registered.NEW:
            self._sessions[record["session_id"]] = state  # assigned back: changelogged
        elif outcome is join.Registered.CONFLICT:
            fields = ", ".join(join.conflicting_fields(state, record))
            await self._dead_letter(
                event,
                dead_letters.CONFLICTING_REGISTRATION,
                f"session already registered with other {fields}; the first registration is kept",
                session_id=record["session_id"],
            )

    async def _on_events(self, record: dict[str, Any], event: Event) -> None:
        self._add_events(record["session_id"], record["events"], record["received_at_ms"], event)

    async def _on_event(self, record: dict[str, Any], event: Event) -> None:
        """One event alone: what producers of other languages may send."""
        self._add_events(record["session_id"], [record], record["received_at_ms"], event)

    def _add_events(
        self, session_id: str, events: list[dict[str, Any]], received_at_ms: int, event: Event
    ) -> None:
        message = event.message
        state = self._state(session_id, message.partition)
        if join.add_events(state, events, received_at_ms, message.offset):
            self._sessions[session_id] = state  # one table write for the whole message

    async def _on_irrelevant(self, record: dict[str, Any], event: Event) -> None:
        state = self._sessions.get(record["session_id"])
        if state is None or state["registration"] is None:
            await self._dead_letter(
                event,
                dead_letters.SESSION_NOT_REGISTERED,
                "cannot mark a session irrelevant before it is registered",
                session_id=record["session_id"],
            )
            return
        if join.mark_irrelevant(state, event.message.offset):
            self._sessions[record["session_id"]] = state

    async def _on_tick(self, record: dict[str, Any], event: Event) -> None:
        """Dead-letter the events of sessions never registered within the wait."""
        partition = event.message.partition
        now_ms = record["sent_at_ms"]
        detail = f"session not registered within {self._settings.orphan_event_wait_seconds:g} s"
        expired = [
            state
            for state in self._partition_sessions(partition)
            if join.is_waiting_too_long(state, now_ms, self._orphan_wait_ms)
        ]
        for state in expired:
            for stored in state["events"]:
                value = self._avro.encode(
                    "clickstream.SessionEvent", join.event_record(state, stored)
                )
                await self._send_dead_letter(
                    reason=dead_letters.ORPHAN_EVENT_EXPIRED,
                    detail=detail,
                    session_id=state["session_id"],
                    topic=self._names.events,
                    partition=partition,
                    offset=stored["offset"],
                    value=value,
                )
            del self._sessions[state["session_id"]]
        if expired:
            logger.info("orphan events expired partition=%s sessions=%s", partition, len(expired))

    # -- releases -----------------------------------------------------------------------

    async def _on_sessions_marker(self, record: dict[str, Any], event: Event) -> None:
        await self._on_marker(record, event, releases.SESSIONS)

    async def _on_events_marker(self, record: dict[str, Any], event: Event) -> None:
        await self._on_marker(record, event, releases.EVENTS)

    async def _on_marker(self, record: dict[str, Any], event: Event, topic: str) -> None:
        partition = event.message.partition
        key = partition_key(partition)
        state = self._partitions.get(key) or releases.new_partition_state(partition)
        outcome, cut = releases.on_marker(state, record, topic, event.message.offset)
        logger.info(
            "release marker batch=%s partition=%s topic=%s offset=%s outcome=%s",
            record["batch_id"],
            partition,
            topic,
            event.message.offset,
            outcome.value,
        )
        if outcome is releases.MarkerOutcome.STALE:
            return
        if cut is None:  # waiting for the marker on the other topic
            self._partitions[key] = state
            return
        selection = releases.select(cut, self._partition_sessions(partition))
        await self._write_part(cut, selection, partition)
        if outcome is releases.MarkerOutcome.COMPLETE:
            self._partitions[key] = releases.record_release(
                state, cut, selection, self._settings.release_history
            )

    async def _write_part(
        self, cut: releases.Cut, selection: releases.Selection, partition: int
    ) -> None:
        """Write this partition's sessions of the batch to MongoDB, then report the part
        to the release coordinator."""
        batch_id = ObjectId(cut["batch_id"])
        partition_count = self._settings.topic_partitions
        docs = []
        too_large = []
        for rank, item in enumerate(selection.included):
            number = releases.session_number(rank, partition, partition_count)
            doc = releases.batch_session_document(batch_id, cut, item, number)
            if len(item.events) > _MEASURE_ABOVE_EVENTS and (
                len(bson.encode(doc)) > self._settings.max_session_snapshot_bytes
            ):
                too_large.append(item)
                continue
            docs.append(doc)
        for item in too_large:
            await self._send_dead_letter(
                reason=dead_letters.SNAPSHOT_TOO_LARGE,
                detail=f"session of {len(item.events)} events too large for batch {batch_id}",
                session_id=item.state["session_id"],
                topic=self._names.sessions,
                partition=partition,
                offset=item.state["registration"]["offset"],
                value=None,
            )
        await asyncio.to_thread(self._store.write_sessions, docs)
        counts = {
            "session_count": len(docs),
            "event_count": sum(doc["event_count"] for doc in docs),
            "repeat_session_count": sum(doc["is_repeat"] for doc in docs),
            "deferred_session_count": len(selection.deferred),
        }
        report = {
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
        # Acknowledged before the marker is: the coordinator never waits for a lost report.
        await delivered
        logger.info(
            "release part written batch=%s partition=%s sessions=%s events=%s deferred=%s",
            cut["batch_id"],
            partition,
            counts["session_count"],
            counts["event_count"],
            counts["deferred_session_count"],
        )

    # -- helpers ------------------------------------------------------------------------

    def _partition_sessions(self, partition: int) -> list[join.SessionState]:
        return [state for state in self._sessions.values() if state["partition"] == partition]

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

    async def _send_dead_letter(self, *, session_id: str | None, **fields: Any) -> None:
        logger.warning(
            "dead letter reason=%s session=%s detail=%s",
            fields["reason"],
            session_id,
            fields["detail"],
        )
        value = dead_letters.dead_letter(self._avro, session_id=session_id, **fields)
        key = session_id.encode() if session_id is not None else None
        await self._topics.dead_letter.send(key=key, value=value)

"""What registrations, events and markings of irrelevance do to a partition's state.

The handlers ``handlers.Handlers`` routes the sessions and events of the source topics to
(see its module for what every handler may and may not do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from clickstream import clock
from schemas import SchemaName
from stream_app import dead_letters, join

if TYPE_CHECKING:
    from confluent_kafka import Message

    from schemas import AvroCodec, Topics
    from schemas.records import (
        AvroRecord,
        EventItem,
        SessionEvent,
        SessionEvents,
        SessionEventsBatch,
        SessionMarkedIrrelevant,
        SessionRegistered,
        SessionRegisteredBatch,
    )
    from stream_app.outgoing import Outgoing
    from stream_app.state.partition import PartitionState


def entry_of(state: PartitionState, session_id: str) -> join.SessionEntry:
    """The session's entry, or a new one if the partition does not hold it."""
    entry = state.entry(session_id)
    return join.new_entry(session_id, state.partition) if entry is None else entry


class SessionHandlers:
    """Registrations and events join into sessions; a registered session can be marked
    irrelevant.

    Args:
        codec: the shared Avro codec.
        names: topic names.
    """

    def __init__(self, codec: AvroCodec, names: Topics) -> None:
        self._codec = codec
        self._names = names

    def registered(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        self._register(state, cast("SessionRegistered", record), message, None, out)

    def registered_batch(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        """Registrations of several requests, grouped by the gateway: each as if alone (a
        conflicting one is dead-lettered alone)."""
        for registration in cast("SessionRegisteredBatch", record)["requests"]:
            alone = self._codec.encode(SchemaName.SESSION_REGISTERED, registration)
            self._register(state, registration, message, alone, out)

    def _register(
        self,
        state: PartitionState,
        registration: SessionRegistered,
        message: Message,
        alone: bytes | None,
        out: list[Outgoing],
    ) -> None:
        session_id = registration["session_id"]
        entry = entry_of(state, session_id)
        existing = state.registration(session_id) if join.is_registered(entry) else None
        outcome, registered, stored = join.register(
            entry, existing, registration, message.offset() or 0
        )
        if outcome is join.Registered.NEW:
            assert stored is not None  # noqa: S101 - NEW carries the registration
            state.put_registration(session_id, stored)
            state.put_entry(registered)
        elif outcome is join.Registered.CONFLICT:
            assert existing is not None  # noqa: S101 - a conflict is with a registration
            fields = ", ".join(join.conflicting_fields(existing, registration))
            out.append(
                dead_letters.of_message(
                    self._codec,
                    self._names,
                    message,
                    reason=dead_letters.CONFLICTING_REGISTRATION,
                    detail=(
                        f"session already registered with other {fields}; "
                        "the first registration is kept"
                    ),
                    session_id=session_id,
                    value=alone,
                )
            )

    def events(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        events = cast("SessionEvents", record)
        self._add(state, events["session_id"], events["events"], events["received_at_ms"], message)

    def events_batch(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        """The events of several requests, grouped by the gateway, each request in order."""
        for request in cast("SessionEventsBatch", record)["requests"]:
            self._add(
                state, request["session_id"], request["events"], request["received_at_ms"], message
            )

    def event(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        """One event alone: what producers of other languages may send."""
        single = cast("SessionEvent", record)
        self._add(state, single["session_id"], [single], single["received_at_ms"], message)

    def _add(
        self,
        state: PartitionState,
        session_id: str,
        events: list[EventItem],
        received_at_ms: int,
        message: Message,
    ) -> None:
        # A session this worker does not hold is new, or its registration is still to be
        # read (the topics are read independently): its events wait for it. Those of a
        # retired session are joined to its released copy once the wait is over (``ticks``).
        entry = entry_of(state, session_id)
        last_piece = None
        if entry["piece_count"]:
            last_piece = state.piece(session_id, entry["piece_count"] - 1)
        known = state.known_ids(entry)
        appended = join.append_events(
            entry, last_piece, known, events, received_at_ms, message.offset() or 0, clock.now_ms()
        )
        if appended is not None:
            state.put_appended(appended)

    def irrelevant(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        marking = cast("SessionMarkedIrrelevant", record)
        entry = state.entry(marking["session_id"])
        if entry is None or not join.is_registered(entry):
            out.append(
                dead_letters.of_message(
                    self._codec,
                    self._names,
                    message,
                    reason=dead_letters.SESSION_NOT_REGISTERED,
                    detail="cannot mark a session irrelevant before it is registered",
                    session_id=marking["session_id"],
                )
            )
            return
        marked = join.mark_irrelevant(entry, message.offset() or 0)
        if marked is not None:
            state.put_entry(marked)

"""What each message of the sessions and events topics does to its partition's state.

Every handler reads the partition's state, applies the rules of ``join`` and ``releases``
(pure functions) and stages the result; what it has to send (dead letters, part reports)
it adds to ``out``, to go out in the same transaction as the state. Nothing here commits:
a batch is committed whole (see ``processor``), so a handler that raises leaves nothing
half done, and a message handled again after a crash finds the state it found before.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, cast

from clickstream import clock
from schemas import MalformedMessageError, SchemaName
from stream_app import dead_letters, join, releases

if TYPE_CHECKING:
    from collections.abc import Callable

    from confluent_kafka import Message

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
        SessionEventsBatch,
        SessionMarkedIrrelevant,
        SessionRegistered,
        SessionRegisteredBatch,
    )
    from stream_app.control_auth import ControlAuth
    from stream_app.forgetting import Forgetting
    from stream_app.outgoing import Outgoing
    from stream_app.part_writer import PartWriter
    from stream_app.state.partition import PartitionState

    Handler = Callable[["PartitionState", dict[str, Any], Message, list[Outgoing]], None]

logger = logging.getLogger(__name__)


class InvalidMessageError(ValueError):
    """A message that decodes but breaks the contract."""


class Handlers:
    """Handles each message of the source topics by its kind (its schema).

    Args:
        settings: waits and retention.
        names: topic names.
        codec: the shared Avro codec.
        control: checks the signatures of control messages.
        parts: writes release parts to MongoDB.
        store: the MongoDB batches (a retired session comes back from its latest copy).
        forgetting: handles erasures.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        codec: AvroCodec,
        control: ControlAuth,
        parts: PartWriter,
        store: BatchStore,
        forgetting: Forgetting,
    ) -> None:
        self._settings = settings
        self._names = names
        self._codec = codec
        self._control = control
        self._parts = parts
        self._store = store
        self._forgetting = forgetting
        self.orphan_wait_ms = int(settings.orphan_event_wait_seconds * 1000)
        self.retention_ms = int(settings.session_retention_seconds * 1000)
        self._handlers: dict[tuple[str, str], Handler] = {
            (names.sessions, SchemaName.SESSION_REGISTERED): self._registered,
            (names.sessions, SchemaName.SESSION_REGISTERED_BATCH): self._registered_batch,
            (names.sessions, SchemaName.SESSION_MARKED_IRRELEVANT): self._irrelevant,
            (names.sessions, SchemaName.RELEASE_MARKER): self._sessions_marker,
            (names.sessions, SchemaName.PARTITION_TICK): self._tick,
            (names.sessions, SchemaName.FORGET_MARKER): self._forget_marker,
            (names.events, SchemaName.SESSION_EVENTS): self._events,
            (names.events, SchemaName.SESSION_EVENTS_BATCH): self._events_batch,
            (names.events, SchemaName.SESSION_EVENT): self._event,
            (names.events, SchemaName.RELEASE_MARKER): self._events_marker,
        }

    def handle(self, state: PartitionState, message: Message, out: list[Outgoing]) -> str:
        """Handle one message; the kind it was (its schema's short name)."""
        topic, value = message.topic() or "", message.value() or b""
        try:
            decoded = self._codec.decode(value)
        except MalformedMessageError as exc:
            self._dead_letter(message, dead_letters.UNDECODABLE_MESSAGE, str(exc), None, out)
            return "undecodable"
        record, kind = decoded.record, decoded.name.rsplit(".", 1)[-1]
        handle = self._handlers.get((topic, decoded.name))
        if handle is None:
            detail = f"{decoded.name} does not belong on {topic}"
            self._dead_letter(
                message, dead_letters.UNEXPECTED_MESSAGE, detail, record.get("session_id"), out
            )
            return kind
        refusal = self._control.refusal(decoded.name, record, topic, value, message.headers())
        if refusal is not None:  # a control message not from the coordinator
            self._dead_letter(message, refusal.reason, refusal.detail, None, out)
            return kind
        try:
            _check_json_text(decoded.name, record)
        except InvalidMessageError as exc:
            self._dead_letter(
                message, dead_letters.INVALID_MESSAGE, str(exc), record.get("session_id"), out
            )
            return kind
        handle(state, record, message, out)
        return kind

    def dead_letter_failed(
        self, message: Message, error: BaseException, out: list[Outgoing]
    ) -> None:
        """A message whose handling failed twice for a reason of its own."""
        session_id = None
        try:
            session_id = self._codec.decode(message.value() or b"").record.get("session_id")
        except MalformedMessageError:
            pass
        detail = f"handling failed: {type(error).__name__}: {error}"
        self._dead_letter(message, dead_letters.HANDLING_FAILED, detail, session_id, out)

    def _dead_letter(
        self,
        message: Message,
        reason: str,
        detail: str,
        session_id: str | None,
        out: list[Outgoing],
        value: bytes | None = None,
    ) -> None:
        """A dead letter for ``message`` (its value, or ``value``: the part at fault)."""
        out.append(
            dead_letters.outgoing(
                self._codec,
                self._names,
                reason=reason,
                detail=detail,
                session_id=session_id,
                topic=message.topic() or "",
                partition=message.partition() or 0,
                offset=message.offset() or 0,
                value=message.value() if value is None else value,
            )
        )

    # -- sessions and events ------------------------------------------------------------

    def _entry(self, state: PartitionState, session_id: str) -> join.SessionEntry:
        entry = state.entry(session_id)
        return join.new_entry(session_id, state.partition) if entry is None else entry

    def _registered(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        self._register(state, cast("SessionRegistered", record), message, None, out)

    def _registered_batch(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
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
        entry = self._entry(state, session_id)
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
            self._dead_letter(
                message,
                dead_letters.CONFLICTING_REGISTRATION,
                f"session already registered with other {fields}; the first registration is kept",
                session_id,
                out,
                value=alone,
            )

    def _events(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        events = cast("SessionEvents", record)
        self._add(state, events["session_id"], events["events"], events["received_at_ms"], message)

    def _events_batch(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        """The events of several requests, grouped by the gateway, each request in order."""
        for request in cast("SessionEventsBatch", record)["requests"]:
            self._add(
                state, request["session_id"], request["events"], request["received_at_ms"], message
            )

    def _event(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
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
        # retired session are joined to its released copy once the wait is over (_tick).
        entry = self._entry(state, session_id)
        last_piece = None
        if entry["piece_count"]:
            last_piece = state.piece(session_id, entry["piece_count"] - 1)
        known = state.known_ids(entry)
        appended = join.append_events(
            entry, last_piece, known, events, received_at_ms, message.offset() or 0, clock.now_ms()
        )
        if appended is not None:
            state.put_appended(appended)

    def _irrelevant(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        marking = cast("SessionMarkedIrrelevant", record)
        entry = state.entry(marking["session_id"])
        if entry is None or not join.is_registered(entry):
            self._dead_letter(
                message,
                dead_letters.SESSION_NOT_REGISTERED,
                "cannot mark a session irrelevant before it is registered",
                marking["session_id"],
                out,
            )
            return
        marked = join.mark_irrelevant(entry, message.offset() or 0)
        if marked is not None:
            state.put_entry(marked)

    # -- ticks --------------------------------------------------------------------------

    def _tick(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        """Dead-letter the events of sessions never registered within the wait, and retire
        sessions released with everything they have and quiet for the retention time.

        No message of a retired session can be read again: the position recorded with the
        state is past all of them, and commits with it."""
        now_ms = cast("PartitionTick", record)["sent_at_ms"]
        expired = retired = revived = dropped = 0
        up_to = {join.WAITING: now_ms - self.orphan_wait_ms, join.QUIET: now_ms - self.retention_ms}
        for entry in state.watched_entries(up_to):
            if join.is_waiting_too_long(entry, now_ms, self.orphan_wait_ms):
                if self._forgetting.is_forgotten(entry["session_id"]):
                    state.remove_session(entry)  # late events of an erased session
                    dropped += 1
                    continue
                if self._revive(state, entry):
                    revived += 1
                    continue
                self._expire_orphan(state, entry, out)
                state.remove_session(entry)
                expired += 1
            elif join.is_retired(entry, now_ms, self.retention_ms):
                state.remove_session(entry)
                retired += 1
        if expired or retired or revived or dropped:
            logger.info(
                "sessions left the tables partition=%s orphans_expired=%s retired=%s revived=%s "
                "erased_dropped=%s",
                state.partition,
                expired,
                retired,
                revived,
                dropped,
            )

    def _revive(self, state: PartitionState, waiting: join.SessionEntry) -> bool:
        """Events that waited in vain for their session's registration: if the session was
        released before (it was retired since), they join its latest released copy and go
        into the next release as its new events. False if it never was."""
        session_id = waiting["session_id"]
        released = self._store.latest_session(session_id)
        if released is None:
            return False
        events = list(join.events_of(waiting, state.piece_reader(session_id)))
        revived = join.revived(waiting, events, released)
        logger.info(
            "retired session back with new events session=%s previous_batch=%s events=%s",
            session_id,
            released["batch_id"],
            len(revived.appended.new_ids),
        )
        state.put_registration(session_id, revived.registration)
        state.put_appended(revived.appended)
        state.remove_pieces(
            session_id, range(revived.appended.entry["piece_count"], waiting["piece_count"])
        )
        state.forget_known_ids(session_id)
        return True

    def _expire_orphan(
        self, state: PartitionState, entry: join.SessionEntry, out: list[Outgoing]
    ) -> None:
        detail = f"session not registered within {self._settings.orphan_event_wait_seconds:g} s"
        session_id = entry["session_id"]
        for stored in join.events_of(entry, state.piece_reader(session_id)):
            out.append(
                dead_letters.outgoing(
                    self._codec,
                    self._names,
                    reason=dead_letters.ORPHAN_EVENT_EXPIRED,
                    detail=detail,
                    session_id=session_id,
                    topic=self._names.events,
                    partition=state.partition,
                    offset=stored["offset"],
                    value=self._codec.encode(
                        SchemaName.SESSION_EVENT, join.event_record(session_id, stored)
                    ),
                )
            )

    # -- releases -----------------------------------------------------------------------

    def _forget_marker(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        self._forgetting.marker(state, record, message, out)

    def _sessions_marker(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        self._marker(state, cast("ReleaseMarker", record), message, releases.SESSIONS, out)

    def _events_marker(
        self, state: PartitionState, record: dict[str, Any], message: Message, out: list[Outgoing]
    ) -> None:
        self._marker(state, cast("ReleaseMarker", record), message, releases.EVENTS, out)

    def _marker(
        self,
        state: PartitionState,
        marker: ReleaseMarker,
        message: Message,
        topic: str,
        out: list[Outgoing],
    ) -> None:
        partition, offset = state.partition, message.offset() or 0
        outcome, partition_state, found = releases.on_marker(
            state.releases(), marker, topic, offset
        )
        logger.info(
            "release marker batch=%s partition=%s topic=%s offset=%s outcome=%s",
            marker["batch_id"],
            partition,
            topic,
            offset,
            outcome.value,
        )
        if outcome is releases.MarkerOutcome.STALE:
            return
        if outcome is releases.MarkerOutcome.WAITING:
            state.put_releases(partition_state)
            return
        assert found is not None  # noqa: S101 - COMPLETE and REPLAY carry one
        if outcome is releases.MarkerOutcome.REPLAY:
            # Done before: the coordinator asks again (a lost report, a healing release):
            # the same counts are reported again.
            completed = cast("releases.CompletedCut", found)
            counts: releases.PartCounts = {
                "session_count": completed["session_count"],
                "event_count": completed["event_count"],
                "repeat_session_count": completed["repeat_session_count"],
                "deferred_session_count": completed["deferred_session_count"],
                "content_digest": completed["content_digest"],
            }
            out.append(self._report(completed, partition, counts))
            return
        cut = cast("releases.Cut", found)
        selection = releases.select(cut, state.dirty_entries(), state.piece_reader)
        counts = self._parts.write(state, cut, selection, out)
        out.append(self._report(cut, partition, counts))
        for item in selection.included:
            marked = releases.mark_released(cut, item)
            if marked is not None:
                state.put_entry(marked)
        state.put_releases(
            releases.record_release(partition_state, cut, counts, self._settings.release_history)
        )

    def _report(
        self,
        cut: releases.Cut | releases.CompletedCut,
        partition: int,
        counts: releases.PartCounts,
    ) -> Outgoing:
        """Tells the release coordinator this partition's part is written."""
        report: PartitionReleased = {
            "batch_id": cut["batch_id"],
            "release_id": cut["release_id"],
            "partition": partition,
            **counts,
        }
        value = self._codec.encode(SchemaName.PARTITION_RELEASED, report)
        return self._control.signed(self._names.releases, cut["batch_id"].encode(), value)


# Records of one event; registrations and batches are listed by the branches below.
_JSON_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    SchemaName.SESSION_EVENT: ("meta",),
}


def _registration_texts(record: dict[str, Any]) -> list[str | None]:
    return [
        record["search_meta"],
        record["payload_filter"],
        *(r["meta"] for r in record["search_results"]),
    ]


def _check_json_text(name: str, record: dict[str, Any]) -> None:
    """``meta``, ``search_meta`` and ``payload_filter`` are JSON text of an object (or null),
    as the contract says: other producers than the gateway can send anything, and a reader
    of the batch would fail on it later."""
    texts: list[str | None] = []
    if name == SchemaName.SESSION_EVENTS:
        texts = [event["meta"] for event in record["events"]]
    elif name == SchemaName.SESSION_EVENTS_BATCH:
        texts = [e["meta"] for request in record["requests"] for e in request["events"]]
    elif name == SchemaName.SESSION_REGISTERED:
        texts = _registration_texts(record)
    elif name == SchemaName.SESSION_REGISTERED_BATCH:
        texts = [text for request in record["requests"] for text in _registration_texts(request)]
    elif name in _JSON_TEXT_FIELDS:
        texts = [record[field] for field in _JSON_TEXT_FIELDS[name]]
    for text in texts:
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidMessageError(f"meta is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidMessageError(f"meta is JSON {type(value).__name__}, not an object")

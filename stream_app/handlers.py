"""What each message of the sessions and events topics does to its partition's state.

Every handler reads the partition's state, applies the rules of ``join`` and ``releases``
(pure functions) and stages the result; what it has to send (dead letters, part reports)
it adds to ``out``, to go out in the same transaction as the state. Nothing here commits:
a batch is committed whole (see ``processor``), so a handler that raises leaves nothing
half done, and a message handled again after a crash finds the state it found before.

``Handlers`` decodes a message, checks it and routes it by its schema (one dict lookup) to
the handler of its concern: registrations and events (``session_handlers``), ticks
(``ticks``), release markers (``markers``), forget markers (``forgetting``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from schemas import MalformedMessageError, SchemaName
from stream_app import dead_letters
from stream_app.markers import MarkerHandlers
from stream_app.session_handlers import SessionHandlers
from stream_app.ticks import TickHandler

if TYPE_CHECKING:
    from collections.abc import Callable

    from confluent_kafka import Message

    from batches.store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from schemas.records import (
        AvroRecord,
        SessionEvents,
        SessionEventsBatch,
        SessionRegistered,
        SessionRegisteredBatch,
    )
    from stream_app.control_auth import ControlAuth
    from stream_app.forgetting import Forgetting
    from stream_app.outgoing import Outgoing
    from stream_app.part_writer import PartWriter
    from stream_app.state.partition import PartitionState

    # A handler casts the record to the TypedDict of the schema it is routed by.
    Handler = Callable[["PartitionState", AvroRecord, Message, list[Outgoing]], None]


class InvalidMessageError(ValueError):
    """A message that decodes but breaks the contract."""


class Handlers:
    """Handles each message of the source topics by its kind (its schema): dead-letters
    what cannot be handled, hands the rest to its handler.

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
        self._names = names
        self._codec = codec
        self._control = control
        self._forgetting = forgetting
        sessions = SessionHandlers(codec, names)
        ticks = TickHandler(settings, names, codec, store, forgetting)
        markers = MarkerHandlers(settings, names, codec, control, parts)
        self.orphan_wait_ms = ticks.orphan_wait_ms
        self.retention_ms = ticks.retention_ms
        # One lookup per message, straight to the method that handles it.
        self._handlers: dict[tuple[str, str], Handler] = {
            (names.sessions, SchemaName.SESSION_REGISTERED): sessions.registered,
            (names.sessions, SchemaName.SESSION_REGISTERED_BATCH): sessions.registered_batch,
            (names.sessions, SchemaName.SESSION_MARKED_IRRELEVANT): sessions.irrelevant,
            (names.sessions, SchemaName.RELEASE_MARKER): markers.sessions_marker,
            (names.sessions, SchemaName.PARTITION_TICK): ticks.tick,
            (names.sessions, SchemaName.FORGET_MARKER): self._forget_marker,
            (names.events, SchemaName.SESSION_EVENTS): sessions.events,
            (names.events, SchemaName.SESSION_EVENTS_BATCH): sessions.events_batch,
            (names.events, SchemaName.SESSION_EVENT): sessions.event,
            (names.events, SchemaName.RELEASE_MARKER): markers.events_marker,
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
                message, dead_letters.UNEXPECTED_MESSAGE, detail, _session_id(record), out
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
                message, dead_letters.INVALID_MESSAGE, str(exc), _session_id(record), out
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
            session_id = _session_id(self._codec.decode(message.value() or b"").record)
        except MalformedMessageError:
            pass
        detail = f"handling failed: {type(error).__name__}: {error}"
        self._dead_letter(message, dead_letters.HANDLING_FAILED, detail, session_id, out)

    def _forget_marker(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        self._forgetting.marker(state, record, message, out)

    def _dead_letter(
        self,
        message: Message,
        reason: str,
        detail: str,
        session_id: str | None,
        out: list[Outgoing],
    ) -> None:
        out.append(
            dead_letters.of_message(
                self._codec,
                self._names,
                message,
                reason=reason,
                detail=detail,
                session_id=session_id,
            )
        )


def _session_id(record: AvroRecord) -> str | None:
    """The session a record of any schema is about: records that have a ``session_id``
    hold a string, the others none."""
    return cast("str | None", record.get("session_id"))


# Records of one event; registrations and batches are listed by the branches below.
_JSON_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    SchemaName.SESSION_EVENT: ("meta",),
}


def _registration_texts(record: SessionRegistered) -> list[str | None]:
    return [
        record["search_meta"],
        record["payload_filter"],
        *(r["meta"] for r in record["search_results"]),
    ]


def _check_json_text(name: str, record: AvroRecord) -> None:
    """``meta``, ``search_meta`` and ``payload_filter`` are JSON text of an object (or null),
    as the contract says: other producers than the gateway can send anything, and a reader
    of the batch would fail on it later."""
    texts: list[str | None] = []
    if name == SchemaName.SESSION_EVENTS:
        texts = [event["meta"] for event in cast("SessionEvents", record)["events"]]
    elif name == SchemaName.SESSION_EVENTS_BATCH:
        batch = cast("SessionEventsBatch", record)
        texts = [e["meta"] for request in batch["requests"] for e in request["events"]]
    elif name == SchemaName.SESSION_REGISTERED:
        texts = _registration_texts(cast("SessionRegistered", record))
    elif name == SchemaName.SESSION_REGISTERED_BATCH:
        requests = cast("SessionRegisteredBatch", record)["requests"]
        texts = [text for request in requests for text in _registration_texts(request)]
    elif name in _JSON_TEXT_FIELDS:
        texts = [cast("str | None", record[field]) for field in _JSON_TEXT_FIELDS[name]]
    for text in texts:
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidMessageError(f"meta is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidMessageError(f"meta is JSON {type(value).__name__}, not an object")

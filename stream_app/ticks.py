"""What a partition tick does to a partition's state: orphan events expire, quiet released
sessions retire, and events of a retired session bring it back from its released copy.

The coordinator ticks every partition every ``CLICKSTREAM_TICK_INTERVAL_SECONDS``;
``handlers.Handlers`` routes the tick here (see its module for what every handler may and
may not do).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from schemas import SchemaName
from stream_app import dead_letters, join

if TYPE_CHECKING:
    from confluent_kafka import Message

    from batches.store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from schemas.records import AvroRecord, PartitionTick
    from stream_app.forgetting import Forgetting
    from stream_app.outgoing import Outgoing
    from stream_app.state.partition import PartitionState

# The handlers' logger: the lines read as they did before the handlers were split.
logger = logging.getLogger("stream_app.handlers")


class TickHandler:
    """Sessions leave the partition's tables on a tick.

    Args:
        settings: waits and retention.
        names: topic names.
        codec: the shared Avro codec.
        store: the MongoDB batches (a retired session comes back from its latest copy).
        forgetting: whether a session was erased.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        codec: AvroCodec,
        store: BatchStore,
        forgetting: Forgetting,
    ) -> None:
        self._settings = settings
        self._names = names
        self._codec = codec
        self._store = store
        self._forgetting = forgetting
        self.orphan_wait_ms = int(settings.orphan_event_wait_seconds * 1000)
        self.retention_ms = int(settings.session_retention_seconds * 1000)

    def tick(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
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

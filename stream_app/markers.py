"""What a release marker does to a partition's state: the partition's part of the batch is
cut, written to MongoDB and reported to the release coordinator.

A marker comes on both the sessions and the events topic; the cut is made once it has been
read on both (``releases``). ``handlers.Handlers`` routes markers here (see its module for
what every handler may and may not do).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from batches.batch import part_counts
from schemas import SchemaName
from stream_app import releases

if TYPE_CHECKING:
    from confluent_kafka import Message

    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from schemas.records import AvroRecord, PartitionReleased, ReleaseMarker
    from stream_app.control_auth import ControlAuth
    from stream_app.outgoing import Outgoing
    from stream_app.part_writer import PartWriter
    from stream_app.state.partition import PartitionState

# The handlers' logger: the lines read as they did before the handlers were split.
logger = logging.getLogger("stream_app.handlers")


class MarkerHandlers:
    """Release markers: the cut, the part written, the signed report.

    Args:
        settings: how many releases a partition remembers.
        names: topic names.
        codec: the shared Avro codec.
        control: signs the part reports.
        parts: writes release parts to MongoDB.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        codec: AvroCodec,
        control: ControlAuth,
        parts: PartWriter,
    ) -> None:
        self._settings = settings
        self._names = names
        self._codec = codec
        self._control = control
        self._parts = parts

    def sessions_marker(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        self._marker(state, cast("ReleaseMarker", record), message, releases.SESSIONS, out)

    def events_marker(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
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
            out.append(self._report(completed, partition, part_counts(completed)))
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

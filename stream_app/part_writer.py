"""Writing a partition's part of a batch to MongoDB, from the partition's state."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

from bson import ObjectId

from stream_app import dead_letters, join, releases

if TYPE_CHECKING:
    from collections.abc import Iterator

    from batches.documents import SessionCopy
    from batches.store import BatchStore
    from schemas import AvroCodec, Topics
    from stream_app.outgoing import Outgoing
    from stream_app.state.partition import PartitionState

logger = logging.getLogger(__name__)


class PartWriter:
    """Writes the sessions a release selected in one partition.

    Args:
        store: the MongoDB batches.
        codec: encodes dead letters.
        names: topic names.
        partition_count: numbers sessions uniquely within a batch.
    """

    def __init__(
        self, store: BatchStore, codec: AvroCodec, names: Topics, partition_count: int
    ) -> None:
        self._store = store
        self._codec = codec
        self._names = names
        self._partition_count = partition_count

    def write(
        self,
        state: PartitionState,
        cut: releases.Cut,
        selection: releases.Selection,
        out: list[Outgoing],
    ) -> releases.PartCounts:
        """Write the part (idempotent: a part written again is the same); its counts.

        A session MongoDB refuses to store (none should: ``batches.documents`` keeps every
        document below its limit) is left out, noted on the batch and dead-lettered in
        ``out``: the release completes all the same.
        """
        partition = state.partition
        batch_id = ObjectId(cut["batch_id"])
        written_part = self._store.write_part(
            batch_id, partition, self._copies(state, cut, selection, batch_id)
        )
        refused = written_part.refused
        refused_ids = {item.session_id for item in refused}
        if refused:
            self._store.record_unreleasable(batch_id, partition, sorted(refused_ids))
            offsets = {i.session_id: i.registered_offset for i in selection.included}
            for item in refused:
                logger.error(
                    "session not stored batch=%s session=%s reason=%s",
                    batch_id,
                    item.session_id,
                    item.reason,
                )
                out.append(
                    dead_letters.outgoing(
                        self._codec,
                        self._names,
                        reason=dead_letters.SNAPSHOT_REFUSED,
                        detail=f"session not stored in batch {batch_id}: {item.reason}",
                        session_id=item.session_id,
                        topic=self._names.sessions,
                        partition=partition,
                        offset=offsets[item.session_id],
                        value=None,
                    )
                )
        written = [i for i in selection.included if i.session_id not in refused_ids]
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
            "content_digest": written_part.content_digest,
        }

    def _copies(
        self,
        state: PartitionState,
        cut: releases.Cut,
        selection: releases.Selection,
        batch_id: ObjectId,
    ) -> Iterator[SessionCopy]:
        """Each session's copy, its events read piece by piece as it is written."""
        for rank, item in enumerate(selection.included):
            registration = state.registration(item.session_id)
            if registration is None:  # an entry registered without one: never written so
                raise LookupError(f"session {item.session_id} has no registration")
            events = join.events_of(item.entry, state.piece_reader(item.session_id))
            yield releases.session_copy(
                batch_id,
                cut,
                item,
                releases.session_number(rank, state.partition, self._partition_count),
                registration,
                itertools.islice(events, item.event_count),
            )

"""What a ForgetMarker does to its partition: the user's sessions leave the state.

The coordinator writes the marker into every partition of the sessions topic. Its owner,
reading it in order with the registrations, removes each session of the user (entry,
registration, events) from the partition's state, notes their ids as erased in MongoDB (so
events of them still in flight are dropped when they expire instead of being
dead-lettered) and reports how many went, in the same transaction as the state. A release
whose part this partition writes later cannot hold them; one written before has its copies
erased by the coordinator once every partition reported.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from schemas import SchemaName

if TYPE_CHECKING:
    from confluent_kafka import Message

    from batches.erasures import ErasureStore
    from schemas import AvroCodec, Topics
    from schemas.records import AvroRecord, ForgetMarker, PartitionForgot
    from stream_app.control_auth import ControlAuth
    from stream_app.outgoing import Outgoing
    from stream_app.state.partition import PartitionState

logger = logging.getLogger(__name__)


class Forgetting:
    """Handles ForgetMarker messages.

    Args:
        codec: encodes the reports.
        names: topic names.
        control: signs the reports.
        erasures: where erased sessions are noted.
    """

    def __init__(
        self, codec: AvroCodec, names: Topics, control: ControlAuth, erasures: ErasureStore
    ) -> None:
        self._codec = codec
        self._names = names
        self._control = control
        self._erasures = erasures

    def marker(
        self, state: PartitionState, record: AvroRecord, message: Message, out: list[Outgoing]
    ) -> None:
        marker = cast("ForgetMarker", record)
        entries = state.user_entries(marker["user_id"])
        for entry in entries:
            state.remove_session(entry)
        self._erasures.mark_forgotten([e["session_id"] for e in entries], marker["request_id"])
        logger.info(
            "user's sessions removed from the tables request=%s partition=%s sessions=%s",
            marker["request_id"],
            state.partition,
            len(entries),
        )
        report: PartitionForgot = {
            "request_id": marker["request_id"],
            "partition": state.partition,
            "session_count": len(entries),
        }
        value = self._codec.encode(SchemaName.PARTITION_FORGOT, report)
        out.append(self._control.signed(self._names.releases, marker["request_id"].encode(), value))

    def is_forgotten(self, session_id: str) -> bool:
        """Whether the session was erased (lately): its late events are dropped."""
        return self._erasures.is_forgotten(session_id)

"""The release coordinator's control messages (release and forget markers) into the
partitions of the ingest topics, signed, each delivery checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas import SchemaName
from stream_app.exceptions import MarkerDeliveryError
from stream_app.releases_reader import KAFKA_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Iterable

    from confluent_kafka import KafkaError, Message, Producer

    from batches.store import Batch
    from schemas import AvroCodec, Topics
    from schemas.records import ReleaseMarker
    from stream_app.control_auth import ControlAuth


class ControlSender:
    """Queues signed control messages on a plain producer and notes the failed deliveries
    until :meth:`check_delivered`.

    Args:
        avro: the shared codec.
        names: topic names.
        control: signs the control messages.
    """

    def __init__(self, avro: AvroCodec, names: Topics, control: ControlAuth) -> None:
        self._avro = avro
        self._names = names
        self._control = control
        self._errors: list[str] = []

    def forget_errors(self) -> None:
        """Start a new check: failures noted so far are dropped."""
        self._errors.clear()

    def send_markers(self, plain: Producer, batch: Batch, partitions: Iterable[int]) -> None:
        """Queue the batch's marker for ``partitions`` of both ingest topics."""
        record: ReleaseMarker = {
            "batch_id": batch.batch_id,
            "release_id": batch.release_id,
            "requested_at_ms": batch.requested_at_ms,
            "min_idle_seconds": batch.min_idle_seconds,
        }
        marker = self._avro.encode(SchemaName.RELEASE_MARKER, record)
        self.send(plain, self._names.ingest(), marker, partitions)

    def send(
        self, plain: Producer, topics: Iterable[str], marker: bytes, partitions: Iterable[int]
    ) -> None:
        """Queue a signed control message for ``partitions`` of ``topics``; each delivery
        is checked by :meth:`check_delivered`."""
        partitions = list(partitions)
        for topic in topics:
            for partition in partitions:
                plain.produce(
                    topic,
                    marker,
                    partition=partition,
                    headers=self._control.headers(topic, marker),
                    on_delivery=self._on_delivery,
                )

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._errors.append(f"{message.topic()}[{message.partition()}]: {error}")

    def check_delivered(self, plain: Producer) -> None:
        """Raise unless every marker queued since the last check was acknowledged."""
        remaining = plain.flush(KAFKA_TIMEOUT)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise MarkerDeliveryError(
                f"release markers not delivered: {remaining} unacknowledged, "
                f"{len(errors)} failed ({'; '.join(errors[:3])})"
            )

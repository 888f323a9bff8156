"""The worker's tables, with Avro changelogs (``SessionState``, ``PartitionState``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from faust.serializers import codecs

if TYPE_CHECKING:
    from faust.types import TableT

    from schemas import AvroCodec

SESSION_STATE = "clickstream.SessionState"
PARTITION_STATE = "clickstream.PartitionState"


class AvroRecordCodec(codecs.Codec):
    """A faust codec for one record schema of the contract (Confluent wire format)."""

    def __init__(self, avro: AvroCodec, schema_name: str) -> None:
        super().__init__()
        self._avro = avro
        self._schema_name = schema_name

    def _dumps(self, obj: Any) -> bytes:
        return self._avro.encode(self._schema_name, obj)

    def _loads(self, s: bytes) -> Any:
        return self._avro.decode(s).record


@dataclass(frozen=True, slots=True)
class StreamTables:
    sessions: TableT[str, dict[str, Any]]
    """session_id -> SessionState: a session joined with its events."""
    partitions: TableT[str, dict[str, Any]]
    """'partition-<n>' -> PartitionState: the releases of one partition."""


def partition_key(partition: int) -> str:
    return f"partition-{partition}"


def declare_tables(app: faust.App, avro: AvroCodec, partitions: int) -> StreamTables:
    for name in (SESSION_STATE, PARTITION_STATE):
        codecs.register(name, AvroRecordCodec(avro, name))

    def table(name: str, value_serializer: str, help_: str) -> TableT[str, dict[str, Any]]:
        return app.Table(
            name,
            partitions=partitions,
            schema=faust.Schema(
                key_type=str, key_serializer="raw", value_serializer=value_serializer
            ),
            help=help_,
        )

    return StreamTables(
        sessions=table("sessions", SESSION_STATE, "Sessions joined with their events"),
        partitions=table("partitions", PARTITION_STATE, "Release cuts of each partition"),
    )

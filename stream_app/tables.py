"""The worker's tables, with Avro changelogs (``SessionEntry``, ``EventPiece``,
``PartitionReleases``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from faust.serializers import codecs

from schemas import SchemaName

if TYPE_CHECKING:
    from faust.types import TableT

    from schemas import AvroCodec
    from schemas.records import EventPiece, PartitionReleases, SessionEntry

SESSION_ENTRY = SchemaName.SESSION_ENTRY
EVENT_PIECE = SchemaName.EVENT_PIECE
PARTITION_RELEASES = SchemaName.PARTITION_RELEASES


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


class RawKeyTable(faust.Table):  # type: ignore[type-arg]
    """A table keyed by the raw UTF-8 ``session_id``, its values in one Avro record schema.

    Faust derives a table's serializers from its key and value types (JSON for plain types)
    and ignores a schema's. They are set here, before ``app.tables.add`` builds the
    changelog topic from them: with JSON keys, faust's router would hash other bytes than
    the producers partition by and send a lookup to a worker that does not own the session.
    """

    def __init__(self, app: faust.App, *, value_serializer: str, **kwargs: Any) -> None:
        super().__init__(app, key_type=str, **kwargs)
        self.key_serializer = "raw"
        self.value_serializer = value_serializer


@dataclass(frozen=True, slots=True)
class StreamTables:
    # The values are what AvroRecordCodec decodes with the record schema of each table.
    sessions: TableT[str, SessionEntry]
    """session_id -> SessionEntry: a session's registration and the count of its events."""
    pieces: TableT[str, EventPiece]
    """'<session_id>\\x00<index>' -> EventPiece: a session's events, in pieces."""
    partitions: TableT[str, PartitionReleases]
    """'partition-<n>' -> PartitionReleases: the releases of one partition."""


def partition_key(partition: int) -> str:
    return f"partition-{partition}"


def declare_tables(
    app: faust.App, avro: AvroCodec, partitions: int, changelog_segment_bytes: int
) -> StreamTables:
    """The worker's tables. Their changelogs are compacted with segments of
    ``changelog_segment_bytes``, so what recovery reads grows with the live sessions, not
    with every change ever made (a retired session leaves a tombstone, then nothing)."""
    for name in (SESSION_ENTRY, EVENT_PIECE, PARTITION_RELEASES):
        codecs.register(name, AvroRecordCodec(avro, name))

    def table(name: str, value_serializer: str, help_: str) -> TableT[str, Any]:
        table = RawKeyTable(
            app,
            name=name,
            partitions=partitions,
            value_serializer=value_serializer,
            beacon=app.tables.beacon,
            help=help_,
            extra_topic_configs={"segment.bytes": str(changelog_segment_bytes)},
        )
        return app.tables.add(table)  # type: ignore[return-value]

    # Names of their own: the values of the tables before events moved into pieces
    # (schema ids 10 and 11) are not read any more.
    return StreamTables(
        sessions=table("session-entries", SESSION_ENTRY, "Sessions and their event counts"),
        pieces=table("event-pieces", EVENT_PIECE, "The events of each session, in pieces"),
        partitions=table("partition-releases", PARTITION_RELEASES, "Each partition's releases"),
    )

"""The message contract: Avro schemas (``avro/*.avsc``), their ids, the topics they go to.

Every producer and consumer of the pipeline encodes and decodes through :class:`AvroCodec`,
so each message has exactly one definition: its ``.avsc`` file. ``records`` types them
(one TypedDict per record, checked against the files by the tests) and names them
(:class:`SchemaName`).
"""

from schemas.codec import AvroCodec, Decoded
from schemas.exceptions import (
    MalformedMessageError,
    RecordMismatchError,
    SchemaError,
    UnknownSchemaError,
)
from schemas.json_text import JsonObject, from_json_text, to_json_text
from schemas.records import SchemaName, event_item
from schemas.topics import Topics

__all__ = [
    "AvroCodec",
    "Decoded",
    "JsonObject",
    "MalformedMessageError",
    "RecordMismatchError",
    "SchemaError",
    "SchemaName",
    "Topics",
    "UnknownSchemaError",
    "event_item",
    "from_json_text",
    "to_json_text",
]

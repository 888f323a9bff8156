"""Avro in the Confluent wire format: a zero magic byte, a 4-byte big-endian schema id,
then the Avro binary body. A Confluent Schema Registry reads these messages as they are;
without one, ids come from ``schema_ids.json`` beside this file."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import load_schema

from schemas.exceptions import (
    MalformedMessageError,
    RecordMismatchError,
    SchemaSetupError,
    UnknownSchemaError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

SCHEMA_DIR = Path(__file__).parent / "avro"
SCHEMA_IDS_FILE = Path(__file__).parent / "schema_ids.json"
_HEADER = struct.Struct(">bI")
MAGIC_BYTE = 0


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded message: the full name of its schema and its record."""

    name: str
    record: dict[str, Any]


def load_schema_ids(path: Path = SCHEMA_IDS_FILE) -> dict[str, int]:
    """Schema full name -> id, as kept in ``schema_ids.json``."""
    raw = json.loads(path.read_text())
    return {name: int(schema_id) for name, schema_id in raw.items() if not name.startswith("_")}


class AvroCodec:
    """Encodes and decodes every message kind of the pipeline.

    Schemas are parsed once, here; build one codec per process and share it.

    Args:
        schema_ids: full schema name -> id. Default: the ids in ``schema_ids.json``.
    """

    def __init__(self, schema_ids: Mapping[str, int] | None = None) -> None:
        ids = dict(schema_ids if schema_ids is not None else load_schema_ids())
        if len(set(ids.values())) != len(ids):
            raise SchemaSetupError(f"two schemas share an id: {ids}")
        named: dict[str, Any] = {}
        self._by_name: dict[str, tuple[int, Any]] = {}
        self._by_id: dict[int, tuple[str, Any]] = {}
        for name, schema_id in ids.items():
            path = SCHEMA_DIR / f"{name}.avsc"
            if not path.exists():
                raise SchemaSetupError(f"schema {name} (id {schema_id}) has no file {path}")
            parsed = load_schema(str(path), named_schemas=named)
            self._by_name[name] = (schema_id, parsed)
            self._by_id[schema_id] = (name, parsed)
        self._record_unions = {
            name: _record_unions(parsed, named) for name, (_, parsed) in self._by_name.items()
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def named_types(self) -> dict[str, dict[str, Any]]:
        """Every named type (record or enum) the message schemas hold, nested ones too, by
        full name, as parsed."""
        found: dict[str, dict[str, Any]] = {}

        def walk(schema: Any) -> None:
            if isinstance(schema, list):  # a union
                for branch in schema:
                    walk(branch)
            elif isinstance(schema, dict):
                if schema.get("type") in ("record", "enum") and schema["name"] not in found:
                    found[schema["name"]] = schema
                for field in schema.get("fields", ()):
                    walk(field["type"])
                walk(schema.get("items"))

        for _, parsed in self._by_name.values():
            walk(parsed)
        return found

    def schema_id(self, name: str) -> int:
        return self._by_name[name][0]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the schema ``name``; raises :class:`RecordMismatchError`
        if it does not fit."""
        try:
            schema_id, parsed = self._by_name[name]
        except KeyError:
            raise SchemaSetupError(f"no schema named {name}") from None
        unions = self._record_unions[name]
        if unions:
            # Name the branch (fastavro's tuple notation): otherwise fastavro validates the
            # whole record against each branch before writing it, 40% of a SessionEntry's
            # encoding, which the worker does on every table write.
            record = dict(record)
            for field, branch in unions:
                value = record.get(field)
                if value is not None:
                    record[field] = (branch, value)
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            schemaless_writer(out, parsed, record)
        except (ValueError, TypeError) as exc:  # fastavro raises either, by field type
            raise RecordMismatchError(f"record does not fit {name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> Decoded:
        """Decode a message; raises MalformedMessageError for anything not of the contract."""
        if len(data) < _HEADER.size:
            raise MalformedMessageError(f"message of {len(data)} bytes has no Avro header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise MalformedMessageError(f"message starts with {magic}, not the magic byte 0")
        try:
            name, parsed = self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"unknown schema id {schema_id}") from None
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, parsed, None)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise MalformedMessageError(f"bad Avro body for {name}: {exc}") from exc
        if body.tell() != len(data):
            raise MalformedMessageError(f"{len(data) - body.tell()} trailing bytes after {name}")
        if not isinstance(record, dict):
            raise MalformedMessageError(f"{name} did not decode to a record")
        return Decoded(name, record)


def _record_unions(parsed: dict[str, Any], named: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The fields of a record schema typed as null or one record: (field, record's name)."""
    found = []
    for field in parsed.get("fields", ()):
        branches = field["type"]
        if not isinstance(branches, list) or len(branches) != 2 or "null" not in branches:
            continue
        (branch,) = [b for b in branches if b != "null"]
        if isinstance(branch, dict) and branch.get("type") == "record":
            found.append((field["name"], branch["name"]))
        elif isinstance(branch, str) and named.get(branch, {}).get("type") == "record":
            found.append((field["name"], branch))
    return tuple(found)

"""Avro in the Confluent wire format: a zero magic byte, a 4-byte big-endian schema id,
then the Avro binary body. A Confluent Schema Registry reads these messages as they are;
without one, ids come from ``schema_ids.json`` beside this file.

A message schema evolves the way Avro allows (fields added with a default, ...): the new
version gets a new id and becomes ``avro/<name>.avsc``; the version before moves to
``avro/earlier/<name>@<its id>.avsc``. Messages are always written with the newest
version, and a message of an earlier one is read into the newest (Avro's schema
resolution: a field it lacks takes its default), so every reader sees one shape."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import load_schema, parse_schema

from schemas.exceptions import (
    MalformedMessageError,
    RecordMismatchError,
    SchemaSetupError,
    UnknownSchemaError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from schemas.json_text import JsonObject
    from schemas.records import AvroRecord

SCHEMA_DIR = Path(__file__).parent / "avro"
SCHEMA_IDS_FILE = Path(__file__).parent / "schema_ids.json"
EARLIER_DIR = SCHEMA_DIR / "earlier"
_HEADER = struct.Struct(">bI")
MAGIC_BYTE = 0


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded message: the full name of its schema and its record."""

    name: str
    record: AvroRecord
    """A record of the schema ``name``: cast it to that schema's TypedDict."""


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
        named: dict[str, JsonObject] = {}
        self._by_name: dict[str, tuple[int, Any]] = {}
        # id -> (name, the schema it was written with, the newest: None when the same)
        self._by_id: dict[int, tuple[str, Any, Any]] = {}
        for name, schema_id in ids.items():
            path = SCHEMA_DIR / f"{name}.avsc"
            if not path.exists():
                raise SchemaSetupError(f"schema {name} (id {schema_id}) has no file {path}")
            parsed = load_schema(str(path), named_schemas=named)
            # fastavro leaves a record that names a type of another file half-registered
            # (no fields) while it loads that file: register the whole record, so a later
            # schema can hold it (SessionRegisteredBatch holds SessionRegistered).
            whole = cast("JsonObject", parsed)
            named[name] = {key: value for key, value in whole.items() if not key.startswith("__")}
            self._by_name[name] = (schema_id, parsed)
            self._by_id[schema_id] = (name, parsed, None)
        if schema_ids is None:
            self._load_earlier(named)
        self._record_unions = {
            name: _record_unions(parsed, named) for name, (_, parsed) in self._by_name.items()
        }

    def _load_earlier(self, named: dict[str, JsonObject]) -> None:
        """Earlier versions of the message schemas, read into the newest."""
        for path in sorted(EARLIER_DIR.glob("*@*.avsc")):
            name, _, number = path.name.removesuffix(".avsc").partition("@")
            schema_id = int(number)
            if name not in self._by_name:
                raise SchemaSetupError(f"{path.name}: no current schema named {name}")
            if schema_id in self._by_id:
                raise SchemaSetupError(f"{path.name}: id {schema_id} is taken")
            raw = json.loads(path.read_text())
            # Its own named types are its own versions of them; the rest are shared.
            own = _defined_names(raw, raw.get("namespace", ""))
            # Types nested in a message (SearchResult) are known by their parsed messages.
            shared = {**self.named_types(), **named}
            known = {key: value for key, value in shared.items() if key not in own}
            writer = parse_schema(raw, named_schemas=known)
            self._by_id[schema_id] = (name, writer, self._by_name[name][1])

    @property
    def schema_ids(self) -> dict[int, str]:
        """Every id this codec reads, earlier versions included, with its schema's name."""
        return {schema_id: name for schema_id, (name, _, _) in self._by_id.items()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def named_types(self) -> dict[str, JsonObject]:
        """Every named type (record or enum) the message schemas hold, nested ones too, by
        full name, as parsed."""
        found: dict[str, JsonObject] = {}

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
            name, parsed, newest = self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"unknown schema id {schema_id}") from None
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, parsed, newest)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise MalformedMessageError(f"bad Avro body for {name}: {exc}") from exc
        if body.tell() != len(data):
            raise MalformedMessageError(f"{len(data) - body.tell()} trailing bytes after {name}")
        if not isinstance(record, dict):
            raise MalformedMessageError(f"{name} did not decode to a record")
        return Decoded(name, record)


def _record_unions(parsed: JsonObject, named: dict[str, JsonObject]) -> tuple[tuple[str, str], ...]:
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


def _defined_names(schema: Any, namespace: str) -> set[str]:
    """The full names of the named types a schema (as JSON) defines itself."""
    found: set[str] = set()
    if isinstance(schema, list):
        for branch in schema:
            found |= _defined_names(branch, namespace)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            name = schema["name"]
            found.add(name if "." in name else f"{namespace}.{name}")
        for field in schema.get("fields", ()):
            found |= _defined_names(field["type"], namespace)
        if "items" in schema:
            found |= _defined_names(schema["items"], namespace)
    return found

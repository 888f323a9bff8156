"""The typed records match the ``.avsc`` files field for field, in both directions."""

from __future__ import annotations

import typing
from typing import Any, Literal, get_type_hints, is_typeddict

import pytest

from schemas import AvroCodec, records
from schemas.codec import SCHEMA_DIR, load_schema_ids
from schemas.records import SchemaName, event_item

_PRIMITIVES: dict[str, Any] = {
    "string": str,
    "long": int,
    "int": int,
    "double": float,
    "float": float,
    "bytes": bytes,
    "boolean": bool,
}


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _typed_dicts() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(records).items()
        if isinstance(value, type) and is_typeddict(value)
    }


def _expected(avro_type: Any) -> Any:
    """The Python type a field of ``avro_type`` has in ``schemas.records``."""
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type]
        return getattr(records, _short(avro_type))  # a reference to a named type
    if isinstance(avro_type, list):
        branches = [_expected(branch) for branch in avro_type if branch != "null"]
        assert len(branches) == 1, f"only unions with null are used: {avro_type}"
        return branches[0] | None if "null" in avro_type else branches[0]
    kind = avro_type["type"]
    if kind == "array":
        return list[_expected(avro_type["items"])]  # type: ignore[misc]
    if kind == "enum":
        return Literal[tuple(avro_type["symbols"])]
    if kind == "record":
        return getattr(records, _short(avro_type["name"]))
    return _expected(kind)


@pytest.fixture(scope="module")
def named() -> dict[str, dict[str, Any]]:
    return AvroCodec().named_types()


def test_every_avsc_file_is_a_loaded_record(named: dict[str, dict[str, Any]]) -> None:
    files = {path.name.removesuffix(".avsc") for path in SCHEMA_DIR.glob("*.avsc")}

    assert files, "no schema files found"
    assert files <= set(named), f"not reachable from any message schema: {files - set(named)}"


def test_every_record_has_a_typed_dict_and_every_typed_dict_a_record(
    named: dict[str, dict[str, Any]],
) -> None:
    avro_records = {_short(name) for name, schema in named.items() if schema["type"] == "record"}

    assert avro_records == set(_typed_dicts())


@pytest.mark.parametrize(
    "full_name", sorted(AvroCodec().named_types()), ids=lambda name: _short(name)
)
def test_typed_dict_matches_its_record_field_for_field(
    named: dict[str, dict[str, Any]], full_name: str
) -> None:
    schema = named[full_name]
    if schema["type"] == "enum":
        assert getattr(records, _short(full_name)) == Literal[tuple(schema["symbols"])]
        return
    typed = getattr(records, _short(full_name))
    hints = get_type_hints(typed)

    assert list(hints) == [field["name"] for field in schema["fields"]]
    for field in schema["fields"]:
        assert hints[field["name"]] == _expected(field["type"]), field["name"]
    assert typed.__required_keys__ == frozenset(hints), "every field is always present"


def test_schema_names_are_the_message_schemas() -> None:
    assert {str(name) for name in SchemaName} == set(load_schema_ids())
    # A member stands for its string: equal to it, and the same key in a dict or a set.
    name: str = "clickstream.SessionEvents"
    assert SchemaName.SESSION_EVENTS == name
    assert name in {SchemaName.SESSION_EVENTS}


def test_event_item_copies_exactly_the_shared_event_fields() -> None:
    stored = {
        "event_id": "e",
        "object_id": "o",
        "event_type": "click",
        "created_at": 1,
        "meta": None,
        "received_at_ms": 2,
        "offset": 3,
    }

    item = event_item(stored)

    assert item == {k: stored[k] for k in get_type_hints(records.EventItem)}
    assert list(item) == list(typing.get_type_hints(records.EventItem))

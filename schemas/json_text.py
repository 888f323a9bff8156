"""Free-form JSON objects (``meta``, ``search_meta``) travel as JSON text inside Avro.

Python's json keeps what the request held: nested objects, lists, unicode, nulls,
integers of any size and floats (written with ``repr``, read back bit for bit).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

JsonObject = dict[str, Any]
"""A free-form JSON object, as ``json.loads`` gives it: ``meta``, ``search_meta``,
``payload_filter``, ``item_info``, a parsed ``.avsc``, a response body. Only for JSON whose
shape no schema fixes; a record of ``avro/*.avsc`` has its TypedDict in ``records``."""

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# The C encoder JSONEncoder.encode builds on every call, built once: a third of the time
# per call for the small objects of events (the gateway encodes one per event). Arguments:
# no circular check (values come from parsed JSON), no indent, separators, no key sorting,
# no key skipping, allow_nan=False.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
_c_encoder = (
    _c_make_encoder(None, _refuse, encode_basestring, None, ":", ",", False, False, False)
    if _c_make_encoder is not None
    else None
)


class CheckedJson(JsonObject):
    """A JSON object that keeps the text it was checked with, so it is encoded once."""

    __slots__ = ("text",)
    text: str


def to_json_text(value: Any) -> str:
    """Encode a JSON value; raises ValueError for NaN or infinities, which JSON cannot hold."""
    if isinstance(value, CheckedJson):
        return value.text
    if _c_encoder is None:
        return _encoder.encode(value)
    return "".join(_c_encoder(value, 0))


def checked_json(value: JsonObject) -> CheckedJson:
    """``value`` with its JSON text; raises ValueError as :func:`to_json_text` does."""
    checked = CheckedJson(value)  # dict's own __init__: no Python call per event
    checked.text = to_json_text(value)
    return checked


def from_json_text(text: str | None) -> Any:
    """Decode JSON text written by :func:`to_json_text`; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)

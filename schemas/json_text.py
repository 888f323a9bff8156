"""Free-form JSON objects (``meta``, ``search_meta``) travel as JSON text inside Avro.

Python's json keeps what the request held: nested objects, lists, unicode, nulls,
integers of any size and floats (written with ``repr``, read back bit for bit).
"""

from __future__ import annotations

import json
from typing import Any

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def to_json_text(value: Any) -> str:
    """Encode a JSON value; raises ValueError for NaN or infinities, which JSON cannot hold."""
    return _encoder.encode(value)


def from_json_text(text: str | None) -> Any:
    """Decode JSON text written by :func:`to_json_text`; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)

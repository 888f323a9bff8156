"""Pseudonymous user ids: a keyed hash stands in for the raw id before anything is published.

With ``CLICKSTREAM_USER_ID_KEY`` set, every producer of the pipeline (the gateway and the
producer library) publishes ``HMAC-SHA256(key, user_id)`` as 64 hex characters instead of the
id it was given: the same user always gets the same pseudonym under one key, so sessions of a
user still group, while the raw id is stored nowhere. Whoever holds the key can compute a
user's pseudonym from the raw id (to find or erase their sessions); without it, it cannot be
reversed.
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(key: bytes, user_id: str) -> str:
    """The user id as it is published under ``key``."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()

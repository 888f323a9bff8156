"""Control messages nobody else can forge.

Release and forget markers, partition ticks and part reports share topics that producers
may write to (the sessions, events and releases topics). Each one the pipeline writes carries an
HMAC-SHA256 of its topic and exact value bytes in the ``clickstream-signature`` header,
keyed with ``CLICKSTREAM_CONTROL_SECRET``; a control message without a valid one is
refused. The value is signed as it is, so the schemas stay as they are. A genuine marker
copied to another partition of its topic changes nothing: every partition gets the same.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from clickstream import clock
from clickstream.credentials import control_secrets
from schemas import SchemaName
from stream_app.exceptions import MissingControlSecretError
from stream_app.outgoing import Outgoing

if TYPE_CHECKING:
    from clickstream.settings import Settings
    from schemas.records import AvroRecord, ReleaseMarker

HEADER = "clickstream-signature"
CONTROL_MESSAGES = frozenset(
    {
        SchemaName.RELEASE_MARKER,
        SchemaName.PARTITION_TICK,
        SchemaName.PARTITION_RELEASED,
        SchemaName.FORGET_MARKER,
        SchemaName.PARTITION_FORGOT,
    }
)

# Dead-letter reasons.
FORGED_CONTROL_MESSAGE = "forged_control_message"
CONTROL_CLOCK_SKEW = "control_message_clock_skew"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str


class ControlAuth:
    """Signs and checks control messages.

    Args:
        secrets: the first signs; every one is accepted, so a secret can be rotated by
            adding the new one first, restarting, then removing the old one.
        max_skew_ms: a marker requested further ahead of this clock is refused.
    """

    def __init__(self, secrets: list[bytes], max_skew_ms: int) -> None:
        if not secrets:
            raise MissingControlSecretError(
                "no control secret: set CLICKSTREAM_CONTROL_SECRET (the same on every worker)"
            )
        self._secrets = secrets
        self._max_skew_ms = max_skew_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlAuth:
        return cls(control_secrets(settings), int(settings.control_max_clock_skew_seconds * 1000))

    @staticmethod
    def _digest(secret: bytes, topic: str, value: bytes) -> bytes:
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        mac.update(topic.encode() + b"\0")
        mac.update(value)
        return mac.hexdigest().encode()

    def headers(self, topic: str, value: bytes) -> dict[str, Any]:
        """The headers that make ``value`` on ``topic`` a genuine control message (typed
        loosely: faust and confluent-kafka each declare their own header types)."""
        return {HEADER: self._digest(self._secrets[0], topic, value)}

    def signed(self, topic: str, key: bytes, value: bytes) -> Outgoing:
        """``value`` as a control message the worker sends on ``topic``, signed."""
        return Outgoing(topic, key, value, headers=self.headers(topic, value))

    def is_signed(self, topic: str, value: bytes, headers: Any) -> bool:
        given = _header(headers)
        if given is None:
            return False
        found = False
        for secret in self._secrets:
            found |= hmac.compare_digest(given, self._digest(secret, topic, value))
        return found

    def refusal(
        self,
        name: str,
        record: AvroRecord,
        topic: str,
        value: bytes,
        headers: Any,
        now_ms: int | None = None,
    ) -> Refusal | None:
        """Why this decoded message must not be used, or None. Messages other than
        control messages are never refused here."""
        if name not in CONTROL_MESSAGES:
            return None
        if not self.is_signed(topic, value, headers):
            return Refusal(
                FORGED_CONTROL_MESSAGE,
                f"{name} without a valid {HEADER}: not written by the pipeline",
            )
        if name == SchemaName.RELEASE_MARKER:
            now_ms = clock.now_ms() if now_ms is None else now_ms
            ahead_ms = cast("ReleaseMarker", record)["requested_at_ms"] - now_ms
            if ahead_ms > self._max_skew_ms:
                return Refusal(
                    CONTROL_CLOCK_SKEW,
                    f"marker requested {ahead_ms} ms ahead of this worker's clock "
                    f"(at most {self._max_skew_ms} ms)",
                )
        return None


def _header(headers: Any) -> bytes | None:
    """The signature header from faust's dict or confluent-kafka's list of pairs."""
    if not headers:
        return None
    pairs = headers.items() if hasattr(headers, "items") else headers
    for key, value in pairs:
        if key == HEADER and value is not None:
            return bytes(value)
    return None

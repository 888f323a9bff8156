"""A message the worker sends along with a batch's state changes, in the same transaction:
a dead letter or a part report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] | None = None
    partition: int | None = None
    reason: str | None = None
    """A dead letter's reason (for the metrics)."""

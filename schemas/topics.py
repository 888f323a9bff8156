"""Topic names. All pipeline messages are keyed by ``session_id``, so a session and its
events share a partition number on every topic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one deployment, named ``<prefix><name>``."""

    prefix: str = "clickstream."

    @property
    def sessions(self) -> str:
        """SessionRegistered messages."""
        return f"{self.prefix}sessions"

    @property
    def events(self) -> str:
        """SessionEvent messages."""
        return f"{self.prefix}events"

    def ingest(self) -> tuple[str, ...]:
        """The topics the gateway and the producer library write."""
        return (self.sessions, self.events)

    def all(self) -> tuple[str, ...]:
        """Every topic the pipeline owns (faust's changelog topics aside)."""
        return self.ingest()

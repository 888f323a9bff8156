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
        """SessionEvents messages (a request's events), and SessionEvent (one event)."""
        return f"{self.prefix}events"

    @property
    def releases(self) -> str:
        """ReleaseRequested (from the gateway) and PartitionReleased (from partition owners),
        read in order by the release coordinator: one partition."""
        return f"{self.prefix}releases"

    @property
    def batches(self) -> str:
        """BatchReleased: one message per complete batch, for fine-tuning jobs."""
        return f"{self.prefix}batches"

    @property
    def dead_letter(self) -> str:
        """DeadLetter: input the pipeline could not use, with the reason."""
        return f"{self.prefix}dead-letter"

    @property
    def state_changelog(self) -> str:
        """The stream workers' state, compacted: a partition per source partition."""
        return f"{self.prefix}stream-state-changelog"

    @property
    def stream_app_id(self) -> str:
        """The stream workers' consumer group."""
        return f"{self.prefix}stream"

    def ingest(self) -> tuple[str, ...]:
        """The topics the gateway and the producer library write."""
        return (self.sessions, self.events)

    def layout(self, partitions: int) -> dict[str, int]:
        """Every topic the pipeline creates, with its partition count (the workers create
        their changelog themselves, compacted)."""
        return {
            self.sessions: partitions,
            self.events: partitions,
            self.dead_letter: partitions,
            self.releases: 1,
            self.batches: 1,
        }

"""The faust topics of the stream worker. Messages stay raw bytes here: the Avro codec of
``schemas`` decodes them, dispatching on the schema id of each message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from schemas import Topics


@dataclass(frozen=True, slots=True)
class StreamTopics:
    source: faust.TopicT
    """The sessions and events topics, co-partitioned by session_id: one agent reads both."""
    dead_letter: faust.TopicT
    releases: faust.TopicT


def declare_topics(app: faust.App, names: Topics) -> StreamTopics:
    def raw(*topic_names: str) -> faust.TopicT:
        return app.topic(
            *topic_names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    return StreamTopics(
        source=raw(names.sessions, names.events),
        dead_letter=raw(names.dead_letter),
        releases=raw(names.releases),
    )

"""Many sessions at once, published with the producer library (as a service writing
to Kafka directly would), for tests that need a large release."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from producers.library import ClickstreamProducer
from tests.utils.payloads import event_body, session_body

if TYPE_CHECKING:
    from clickstream.settings import Settings


def publish_sessions(settings: Settings, sessions: int, events_each: int) -> list[str]:
    """Register ``sessions`` sessions with ``events_each`` events each; their ids."""

    async def publish(producer: ClickstreamProducer) -> list[str]:
        ids = []
        for start in range(0, sessions, 500):
            chunk = [session_body() for _ in range(start, min(start + 500, sessions))]
            await asyncio.gather(*(producer.register_session_async(s) for s in chunk))
            await asyncio.gather(
                *(
                    producer.add_events_async(
                        s["session_id"], [event_body() for _ in range(events_each)]
                    )
                    for s in chunk
                )
            )
            ids.extend(s["session_id"] for s in chunk)
        return ids

    with ClickstreamProducer(settings) as producer:
        return asyncio.run(publish(producer))

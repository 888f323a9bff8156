"""Dependencies of the routes: the gateway's long-lived clients, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from clickstream.settings import Settings
    from producers.ingest import IngestMessages
    from producers.publisher import KafkaPublisher
    from schemas import Topics


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the routes use: settings, topic names, message builder and publisher."""

    settings: Settings
    topics: Topics
    messages: IngestMessages
    publisher: KafkaPublisher


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

"""The HTTP gateway: validates clickstream requests and publishes them to Kafka."""

from producers.gateway.app import create_app

__all__ = ["create_app"]

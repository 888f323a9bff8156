"""Errors of publishing to Kafka and of refused input."""

from __future__ import annotations

from typing import Any

from clickstream.exceptions import ClickstreamError


class ProducerError(ClickstreamError):
    """Root of the producers' errors."""


class PublishUnavailableError(ProducerError):
    """Kafka did not acknowledge in time, or refused: nothing may be assumed published.

    Retrying is always safe: ids make retries idempotent downstream.
    """


class InvalidInputError(ProducerError, ValueError):
    """Input the contract refuses; ``errors`` lists each problem with its field path."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        summary = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors
        )
        super().__init__(summary)

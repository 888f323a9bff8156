"""Errors the stream worker raises on purpose, under the project's root."""

from __future__ import annotations

from confluent_kafka import KafkaException

from clickstream.exceptions import ClickstreamError


class StreamAppError(ClickstreamError):
    """Root of the stream worker's errors."""


class MarkerDeliveryError(StreamAppError, KafkaException):
    """Release markers were not all acknowledged: the poll is replayed, markers included."""


class MissingControlSecretError(StreamAppError, ValueError):
    """No control secret: the worker could neither sign nor check control messages."""


class UnsupportedKafkaSecurityError(StreamAppError, ValueError):
    """A security setting the worker cannot apply: better not to start than to connect
    with less security than the other clients."""


class FaustInternalsChangedError(StreamAppError):
    """faust or aiokafka is not the code the fixes of ``faust_fixes`` were written for."""


class KafkaCallStuckError(StreamAppError):
    """A librdkafka call outlived its own timeout: the client is stuck, the worker stops."""

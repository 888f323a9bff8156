"""Errors of reading and exporting batches, under the project's root."""

from __future__ import annotations

from clickstream.exceptions import ClickstreamError


class ConsumerError(ClickstreamError):
    """Root of the consumers' errors."""


class BatchExportError(ConsumerError, ValueError):
    """The batch cannot be exported: unknown, not released yet, or a bad destination."""


class InvalidBatchIdError(ConsumerError, ValueError):
    """Not a batch id (an ObjectId: 24 hex characters)."""


class ReleaseWaitTimeoutError(ConsumerError, TimeoutError):
    """No answer to the release on the batch topic in time; the release goes on."""


class DeadLetterError(ConsumerError):
    """The dead-letter topic cannot be read, a letter id is malformed, or a replay was not
    acknowledged."""

"""Errors of the MongoDB batch store, under the project's root."""

from __future__ import annotations

from clickstream.exceptions import ClickstreamError


class BatchStoreError(ClickstreamError):
    """Root of the batch store's errors."""


class MissingMongoUriError(BatchStoreError, ValueError):
    """No MongoDB to connect to: ``CLICKSTREAM_MONGODB_URI`` is not set."""


class BatchContentMismatchError(BatchStoreError):
    """A batch read back is not what was written: its content digest differs."""


class BatchExpiredError(BatchStoreError):
    """The batch expired (``CLICKSTREAM_BATCH_RETENTION_DAYS``): its sessions are gone."""

"""The MongoDB batch store: durable concerns, and a clear error without a MongoDB."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from bson import ObjectId

from batches.exceptions import MissingMongoUriError
from batches.store import BatchStore
from clickstream.exceptions import ClickstreamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings


def test_batches_are_written_with_majority_and_journal_and_read_with_majority(
    settings: Settings,
) -> None:
    assert settings.mongodb_url
    store = BatchStore.connect(
        settings.mongodb_url, settings.mongodb_database, server_selection_timeout_seconds=3
    )
    try:
        for collection in (store.batches, store.sessions):
            assert collection.write_concern.document == {"w": "majority", "j": True}
            assert collection.read_concern.level == "majority"
        store.ensure_indexes()
        assert store.get(ObjectId()) is None, "a majority read on the local mongod"
        assert store.client.options.server_selection_timeout == 3
    finally:
        store.close()


def test_no_mongodb_configured_is_a_clear_error_of_the_project(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(mongodb_uri=None)

    with pytest.raises(MissingMongoUriError, match="CLICKSTREAM_MONGODB_URI") as raised:
        BatchStore.from_settings(settings)

    assert isinstance(raised.value, ClickstreamError)
    assert isinstance(raised.value, ValueError), "callers catching ValueError still do"

"""The gateway under test, in-process, on the test's real broker and topics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from producers.gateway import create_app

if TYPE_CHECKING:
    from collections.abc import Iterator

    from clickstream.settings import Settings


@pytest.fixture
def gateway(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client

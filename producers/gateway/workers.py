"""The gateway's client of the stream workers, which hold the sessions in their tables."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx

from producers.exceptions import ProducerError

if TYPE_CHECKING:
    from batches.public import PublicSession

logger = logging.getLogger(__name__)


class WorkersUnavailableError(ProducerError):
    """No stream worker answered."""


class WorkerClient:
    """Asks the workers for a session; any worker forwards to the partition's owner.

    Args:
        urls: the workers' web addresses (``CLICKSTREAM_WORKER_URLS``), tried in order.
        timeout: seconds per attempt (``CLICKSTREAM_WORKER_REQUEST_TIMEOUT_SECONDS``).
    """

    def __init__(self, urls: list[str], timeout: float) -> None:
        self._urls = [url.rstrip("/") for url in urls]
        self._client = httpx.AsyncClient(timeout=timeout)

    async def session(self, session_id: str, events_limit: int) -> PublicSession | None:
        """The session as the tables hold it, or None if it is not registered."""
        params = {"session_id": session_id, "events_limit": str(events_limit)}
        failures = []
        for url in self._urls:
            try:
                response = await self._client.get(f"{url}/sessions/", params=params)
            except httpx.TransportError as exc:
                failures.append(f"{url}: {exc!r}")
                continue
            if response.status_code == 404:
                return None
            if response.status_code == 200:
                session: PublicSession = response.json()  # the worker's session_view
                return session
            failures.append(f"{url}: HTTP {response.status_code}")
        logger.warning("no worker answered failures=%s", failures)
        raise WorkersUnavailableError("no stream worker answered: " + "; ".join(failures))

    async def ready(self) -> str | None:
        """None once a worker answers its ``/ready/`` (one GET per worker at most), else why
        not."""
        failures = []
        for url in self._urls:
            try:
                response = await self._client.get(f"{url}/ready/")
            except httpx.TransportError as exc:
                failures.append(f"{url}: {exc!r}")
                continue
            if response.status_code == 200:
                return None
            failures.append(f"{url}: HTTP {response.status_code}")
        return "no stream worker is ready: " + ("; ".join(failures) or "none configured")

    async def close(self) -> None:
        await self._client.aclose()

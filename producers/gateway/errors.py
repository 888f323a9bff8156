"""How refused input and an unavailable Kafka are answered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from producers.exceptions import PublishUnavailableError
from producers.gateway.request_body import MalformedJsonError
from producers.gateway.workers import WorkersUnavailableError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response


async def _malformed_json(request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=400, content={"detail": str(exc)})


async def _http_error(request: Request, exc: Exception) -> Response:
    """As FastAPI answers, but a 405's ``Allow`` names every method the document gives the
    path: Starlette names only those of the first route on it (GET and POST are two)."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for it alone
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        operations = request.app.openapi()["paths"].get(request.url.path, {})
        if operations:
            headers["Allow"] = ", ".join(sorted(method.upper() for method in operations))
    return JSONResponse(
        status_code=exc.status_code, content={"detail": exc.detail}, headers=headers or None
    )


def add_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    async def _unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            status_code=503,
            content={"detail": f"{exc}; retry later"},
            headers={"Retry-After": str(retry_after_seconds)},
        )

    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(MalformedJsonError, _malformed_json)
    app.add_exception_handler(PublishUnavailableError, _unavailable)
    app.add_exception_handler(WorkersUnavailableError, _unavailable)

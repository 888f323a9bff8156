"""Who may call what: bearer tokens on the internal endpoints, optional ingest keys on the
ingest endpoints, and CORS for browser front-ends on the public endpoints only."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware

if TYPE_CHECKING:
    from pydantic import SecretStr
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

INTERNAL_PREFIX = "/api/v1/clickstream/internal"
INGEST_KEY_HEADER = "X-Clickstream-Key"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="internalToken",
    description="One of CLICKSTREAM_INTERNAL_TOKENS (`make run` prints its local token).",
)
_ingest_key = APIKeyHeader(
    name=INGEST_KEY_HEADER,
    auto_error=False,
    scheme_name="ingestKey",
    description="One of CLICKSTREAM_INGEST_KEYS, when set.",
)

INTERNAL_REFUSAL: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing or wrong bearer token"}
}
INGEST_REFUSAL: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing or wrong X-Clickstream-Key"}
}


def matches(given: str | None, allowed: list[SecretStr]) -> bool:
    """Whether ``given`` is one of ``allowed``, comparing every one in constant time."""
    if not given:
        return False
    candidate = given.encode()
    found = False
    for secret in allowed:
        found |= hmac.compare_digest(candidate, secret.get_secret_value().encode())
    return found


def _settings_secrets(request: Request, name: str) -> list[SecretStr]:
    secrets: list[SecretStr] = getattr(request.app.state.gateway.settings, name)
    return secrets


async def require_internal_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <one of the tokens>``."""
    tokens = _settings_secrets(request, "internal_tokens")
    given = credentials.credentials if credentials is not None else None
    if not matches(given, tokens):
        detail = "a valid bearer token is required (CLICKSTREAM_INTERNAL_TOKENS)"
        if not tokens:
            detail = "no internal token is configured (CLICKSTREAM_INTERNAL_TOKENS): refused"
        raise HTTPException(
            status_code=401,
            detail=detail,
            headers={"WWW-Authenticate": 'Bearer realm="clickstream-internal"'},
        )


async def require_ingest_key(
    request: Request, key: Annotated[str | None, Depends(_ingest_key)]
) -> None:
    """401 unless the request carries one of the ingest keys in ``X-Clickstream-Key``."""
    if not matches(key, _settings_secrets(request, "ingest_keys")):
        raise HTTPException(
            status_code=401,
            detail=f"a valid {INGEST_KEY_HEADER} header is required",
            headers={"WWW-Authenticate": f'ApiKey header="{INGEST_KEY_HEADER}"'},
        )


def log_security(internal_tokens: int, ingest_keys: int, cors_origins: list[str]) -> None:
    if not internal_tokens:
        logger.warning(
            "internal endpoints refuse every call reason=no CLICKSTREAM_INTERNAL_TOKENS configured"
        )
    logger.info(
        "security internal_tokens=%s ingest_keys=%s cors_origins=%s",
        internal_tokens,
        ingest_keys or "off",
        ",".join(cors_origins) or "none",
    )


class PublicCors:
    """CORS for the public endpoints; the internal ones never answer cross-origin calls
    (no CORS headers, so browsers refuse them, preflight included).

    Args:
        app: the application behind it.
        origins: ``CLICKSTREAM_CORS_ORIGINS``.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", INGEST_KEY_HEADER],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INTERNAL_PREFIX):
            await self.app(scope, receive, send)
        else:
            await self.cors(scope, receive, send)

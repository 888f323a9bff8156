"""The two ingest routes without the web framework's per-request layers.

``POST /session`` and ``POST /session/events`` are most of what the gateway serves: a
browser sends one click per request. Through FastAPI (routing, dependencies, the response
model, every middleware) a request of one click cost about 450 us of CPU, more than half
of it the framework's. Here they are answered by plain ASGI in front of the app: the same
key check, body limit, validation (the same pydantic models, strict), messages and
answers, byte for byte, and the same metrics. Everything else (and a request from a
browser origin, when CORS is on) goes through the app as before; the routes stay declared
there, so the OpenAPI document is the same.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, TypedDict

from fastapi.exceptions import RequestValidationError

from producers.exceptions import PublishUnavailableError
from producers.gateway.request_body import MalformedJsonError, parse_json
from producers.gateway.security import INGEST_KEY_HEADER, matches

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.datastructures import State
    from starlette.types import ASGIApp, Receive, Scope, Send

    from clickstream.settings import Settings
    from producers.gateway.deps import Gateway
    from producers.gateway.metrics import GatewayMetrics
    from producers.gateway.request_body import BodyError

    Handler = Callable[[Gateway, bytes], Awaitable["SessionAnswer | EventsAnswer"]]

PREFIX = "/api/v1/clickstream"
SESSION_PATH = f"{PREFIX}/session"
EVENTS_PATH = f"{PREFIX}/session/events"
_JSON = [(b"content-type", b"application/json")]
_KEY_HEADER = INGEST_KEY_HEADER.lower().encode()


class SessionAnswer(TypedDict):
    """``POST /session``'s 200 (``SessionAccepted``)."""

    session_id: str
    created_at: int


class EventsAnswer(TypedDict):
    """``POST /session/events``'s 200 (``EventsAccepted``)."""

    session_id: str
    accepted: int


class Refusal(TypedDict):
    """Any other answer: why."""

    detail: str | list[BodyError]


class _Answer(Exception):  # noqa: N818 - not an error: an answer other than 200
    def __init__(self, status: int, body: Refusal, headers: list[Any] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or []


def _encode(body: SessionAnswer | EventsAnswer | Refusal) -> bytes:
    """As Starlette's JSONResponse renders a body."""
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


async def _events(gateway: Gateway, body: bytes) -> EventsAnswer:
    batch = parse_json(body, gateway.models.EventsIn)
    await gateway.grouping.events(gateway.messages.events_records(batch, time.time()))
    return {"session_id": batch.session_id, "accepted": len(batch.events)}


async def _session(gateway: Gateway, body: bytes) -> SessionAnswer:
    session = parse_json(body, gateway.models.SessionIn)
    record = gateway.messages.session_record(session, time.time())
    await gateway.grouping.session(record, len(body))
    return {"session_id": session.session_id, "created_at": record["created_at"]}


class FastIngest:
    """Pure ASGI, outermost: serves the ingest routes, hands everything else on.

    Args:
        app: the application (with its middleware) behind it.
        state: the FastAPI app's state, where the lifespan puts the gateway.
        settings: limits, keys, CORS and the 503's ``Retry-After``.
        metrics: the gateway's metrics, counted as for every other request.
    """

    def __init__(
        self, app: ASGIApp, state: State, settings: Settings, metrics: GatewayMetrics
    ) -> None:
        self.app = app
        self._state = state
        self._metrics = metrics
        self._routes: dict[str, Handler] = {SESSION_PATH: _session, EVENTS_PATH: _events}
        self._keys = settings.ingest_keys
        self._cors = bool(settings.cors_origins)
        self._max_bytes = settings.max_body_bytes
        self._retry_after = str(settings.retry_after_seconds).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._routes.get(scope["path"])
            gateway = getattr(self._state, "gateway", None)
            if handler is not None and gateway is not None and not self._cross_origin(scope):
                await self._serve(handler, gateway, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _cross_origin(self, scope: Scope) -> bool:
        return self._cors and any(name == b"origin" for name, _ in scope["headers"])

    async def _serve(
        self, handler: Handler, gateway: Gateway, scope: Scope, receive: Receive, send: Send
    ) -> None:
        start = time.perf_counter()
        answer: SessionAnswer | EventsAnswer | Refusal
        try:
            self._check_key(scope)
            body = await self._body(scope, receive)
            if body is None:  # the client went away
                return
            status, answer, headers = 200, await handler(gateway, body), _JSON
        except _Answer as refused:
            status, answer, headers = refused.status, refused.body, _JSON + refused.headers
        except MalformedJsonError as exc:
            status, answer, headers = 400, {"detail": str(exc)}, _JSON
        except RequestValidationError as exc:
            status, answer, headers = 422, {"detail": list(exc.errors())}, _JSON
        except PublishUnavailableError as exc:
            status, answer = 503, {"detail": f"{exc}; retry later"}
            headers = [*_JSON, (b"retry-after", self._retry_after)]
        content = _encode(answer)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(content)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": content})
        route = scope["path"]
        self._metrics.requests.labels("POST", route, str(status)).inc()
        self._metrics.request_duration.labels("POST", route).observe(time.perf_counter() - start)

    def _check_key(self, scope: Scope) -> None:
        if not self._keys:
            return
        given = next((v for name, v in scope["headers"] if name == _KEY_HEADER), None)
        if not matches(given.decode("latin-1") if given else None, self._keys):
            raise _Answer(
                401,
                {"detail": f"a valid {INGEST_KEY_HEADER} header is required"},
                [(b"www-authenticate", f'ApiKey header="{INGEST_KEY_HEADER}"'.encode())],
            )

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self._max_bytes:
                    raise self._too_large()
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> _Answer:
        return _Answer(
            413,
            {"detail": f"request body exceeds the limit of {self._max_bytes} bytes"},
            [(b"connection", b"close")],
        )

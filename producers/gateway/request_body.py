"""Request bodies are parsed and validated in one pass by pydantic-core, from the raw bytes,
whatever the Content-Type says: malformed JSON is a 400, a contract violation a 422.

Validation is strict: a JSON value of another type than the OpenAPI document says (``false``
or ``"1.5"`` for a number, ``1.0`` for an integer) is refused, not converted."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NotRequired, TypedDict, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from clickstream.exceptions import ClickstreamError

if TYPE_CHECKING:
    from fastapi import Request
    from pydantic_core import ErrorDetails

    from schemas import JsonObject

ModelT = TypeVar("ModelT", bound=BaseModel)
_MAX_ECHOED_CHARS = 200


class BodyError(TypedDict):
    """A validation error as a 422 answers it: where in the body, what, and the input if
    it is small and JSON."""

    type: str
    loc: tuple[str | int, ...]
    msg: str
    input: NotRequired[object]


class MalformedJsonError(ClickstreamError, ValueError):
    """The body is not JSON."""


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """Validate the request body against ``model``; each error names its field path."""
    return parse_json(await request.body(), model)


def parse_json(body: bytes, model: type[ModelT]) -> ModelT:
    """Validate a body against ``model``: MalformedJsonError if it is not JSON, else a
    RequestValidationError naming each error's field path."""
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        for error in errors:
            if error["type"] == "json_invalid":
                raise MalformedJsonError(f"Malformed JSON body: {error['msg']}") from exc
        raise RequestValidationError([_in_body(error) for error in errors]) from exc


def _in_body(error: ErrorDetails) -> BodyError:
    """The error at its path under ``body``, echoing the input only if it is small and JSON."""
    shown: BodyError = {"type": error["type"], "loc": ("body", *error["loc"]), "msg": error["msg"]}
    value = error.get("input")
    if value is None or isinstance(value, bool | int) and abs(value) < 2**63:
        shown["input"] = value
    elif isinstance(value, float) and math.isfinite(value):
        shown["input"] = value
    elif isinstance(value, str) and len(value) <= _MAX_ECHOED_CHARS:
        shown["input"] = value
    return shown


def body_schema(model: type[BaseModel]) -> JsonObject:
    """The OpenAPI request body of a route that parses ``model`` with :func:`parse_body`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }

"""Request and answer models of the clickstream API, shared by the HTTP gateway and the
producer library, so both refuse the same input with the same messages.

Each model is declared once. Constraints live in ``Field(...)`` and ``Annotated`` metadata;
those that depend on a limit of the settings (``CLICKSTREAM_MAX_*``, ``..._CREATED_AT_*``) are
marked :class:`Limited`. The classes below carry the default limits; the gateway and the
library validate with :func:`request_models`, the same classes with the limits of the settings
they are given: nothing reads settings at import.
"""

from __future__ import annotations

import functools
import time
import types
from copy import copy
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from annotated_types import GroupedMetadata, MaxLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
    model_validator,
)

from clickstream.settings import (
    DEFAULT_CREATED_AT_MAX_AGE_SECONDS,
    DEFAULT_CREATED_AT_MAX_AHEAD_SECONDS,
    DEFAULT_MAX_EVENTS_PER_REQUEST,
    DEFAULT_MAX_ID_LENGTH,
    Settings,
)
from schemas.json_text import JsonObject, checked_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a request is validated against (``CLICKSTREAM_MAX_*``, ``..._CREATED_AT_*``);
    by default those of the settings' defaults."""

    max_id_length: int = DEFAULT_MAX_ID_LENGTH
    max_events_per_request: int = DEFAULT_MAX_EVENTS_PER_REQUEST
    created_at_max_age_seconds: int = DEFAULT_CREATED_AT_MAX_AGE_SECONDS
    created_at_max_ahead_seconds: int = DEFAULT_CREATED_AT_MAX_AHEAD_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_id_length=settings.max_id_length,
            max_events_per_request=settings.max_events_per_request,
            created_at_max_age_seconds=settings.created_at_max_age_seconds,
            created_at_max_ahead_seconds=settings.created_at_max_ahead_seconds,
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Limited(GroupedMetadata):
    """``Annotated`` metadata that depends on the limits: it stands for ``bounds(limits)``.

    The models here are declared at :data:`DEFAULT_LIMITS`; :func:`with_limits` gives a model
    (and the models it holds) other limits by putting each of these at them."""

    bounds: Callable[[Limits], tuple[Any, ...]]
    limits: Limits = DEFAULT_LIMITS

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bounds(self.limits))

    def at(self, limits: Limits) -> Limited:
        return self if limits == self.limits else replace(self, limits=limits)


def _finite_json(value: JsonObject | None) -> JsonObject | None:
    """Refuses what JSON cannot carry; the text made for the check is kept for the message."""
    if value is None:
        return None
    try:
        return checked_json(value)
    except ValueError:
        raise ValueError("must not hold NaN or Infinity, which JSON cannot carry") from None


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer: take it as 3 (the gateway parses strictly)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = BeforeValidator(_whole_number)


def _in_time_window(limits: Limits, value: int | None) -> int | None:
    if value is None:
        return None
    now = time.time()
    oldest = now - limits.created_at_max_age_seconds
    newest = now + limits.created_at_max_ahead_seconds
    if not oldest <= value <= newest:
        when = datetime.fromtimestamp(value, UTC).isoformat() if 0 <= value < 2**35 else value
        raise ValueError(
            f"{value} ({when}) lies outside the accepted window: UTC seconds not older than "
            f"{limits.created_at_max_age_seconds} s and at most "
            f"{limits.created_at_max_ahead_seconds} s ahead of the server's clock"
        )
    return value


def _longest_id(limits: Limits) -> tuple[Any, ...]:
    return (MaxLen(limits.max_id_length),)


def _time_window(limits: Limits) -> tuple[Any, ...]:
    return (AfterValidator(functools.partial(_in_time_window, limits)),)


def _event_type_bounds(limits: Limits) -> tuple[Any, ...]:
    # null is accepted as "click": the document says so.
    document = {
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": limits.max_id_length},
            {"type": "null"},
        ],
        "default": "click",
        "description": "What happened; `click` when absent or null.",
    }
    return (MaxLen(limits.max_id_length), WithJsonSchema(document))


def _most_events(limits: Limits) -> tuple[Any, ...]:
    return (MaxLen(limits.max_events_per_request),)


Id = Annotated[str, StringConstraints(min_length=1), Limited(_longest_id)]
"""An identifier: session, event, object, user or release id."""

FreeJson = Annotated[JsonObject | None, AfterValidator(_finite_json)]
"""Free-form metadata: any JSON object, passed through losslessly."""


def _has_query(value: JsonObject | None) -> JsonObject | None:
    if value is not None and not isinstance(value.get("query"), dict):
        raise ValueError(
            'must be an object with a "query" object, as '
            '{"query": {"term": {"field": "brand", "value": "acme"}}}'
        )
    return value


PayloadFilter = Annotated[
    Annotated[
        JsonObject,
        WithJsonSchema(
            {
                "type": "object",
                "properties": {"query": {"type": "object"}},
                "required": ["query"],
            }
        ),
    ]
    | None,
    AfterValidator(_finite_json),
    AfterValidator(_has_query),
    Field(
        description="The filter the search applied, as the original service v1.0.0 takes it "
        "(`query`: term, terms, match, match_phrase, range, exists, wildcard, any, all, or bool "
        "with must/should/filter/must_not); kept as sent."
    ),
]

Timestamp = Annotated[
    int | None,
    WholeNumber,
    Field(
        description="UTC seconds; the server's current time when absent. Accepted only within "
        "CLICKSTREAM_CREATED_AT_MAX_AGE_SECONDS before and ..._MAX_AHEAD_SECONDS after the "
        "server's clock (12 h and 5 min by default): a window that moves, so this document "
        "cannot give it as bounds."
    ),
    Limited(_time_window),
]

EventType = Annotated[
    str,
    BeforeValidator(lambda value: "click" if value is None else value),
    StringConstraints(min_length=1),
    Limited(_event_type_bounds),
]

# Ten years: beyond it no session is ever idle enough; the bound keeps the value a long.
MAX_IDLE_SECONDS = 10 * 365 * 24 * 3600

_META = Field(default=None, description="Any JSON object.")
# A field of its own, so it is validated (and documented) whenever it is sent.
_ITEM_INFO = Field(
    default=None,
    exclude=True,
    description="Another name for `meta` (the original service's docs write it); `meta` "
    "wins when both are sent.",
)


class RequestModel(BaseModel):
    """Unknown fields are ignored, as the original service did."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class WithMeta(RequestModel):
    """``meta``, or ``item_info`` when ``meta`` is not sent."""

    meta: FreeJson = _META
    item_info: FreeJson = _ITEM_INFO

    @model_validator(mode="after")
    def _meta_from_item_info(self) -> Self:
        if self.item_info is not None and "meta" not in self.model_fields_set:
            return self.model_copy(update={"meta": self.item_info})
        return self


class SearchResultIn(WithMeta):
    object_id: Id
    rank: float | None = Field(default=None, allow_inf_nan=False)


class SortByIn(RequestModel):
    """How the search sorted the results it showed (the original service's SortByOptions)."""

    field: Id
    order: Literal["asc", "desc"] = "asc"
    force_not_payload: bool = Field(default=False, description="The field is not in the payload")


class SessionIn(RequestModel):
    """A search session to register: the query and the results shown."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "c327c30bd3db459093e5f5d254bdd144",
                    "search_query": "user search query",
                    "search_results": [
                        {
                            "object_id": "2f827cbb9fe544cdaca44b2dafd37785",
                            "rank": 0.3,
                            "item_info": {},
                        },
                        {"object_id": "e000f005dc1343ea8ddf234c557832a5"},
                        {"object_id": "96365929fa5b4286b3a04639cbc7c1d5"},
                    ],
                    "search_meta": {},
                    "user_id": "b604bbb1a57a418d925ebc9d615de99a",
                }
            ]
        }
    )

    session_id: Id
    search_query: str
    search_results: list[SearchResultIn]
    search_meta: FreeJson = None
    user_id: Id | None = None
    created_at: Timestamp = None
    payload_filter: PayloadFilter = None
    sort_by: SortByIn | None = None


class EventIn(WithMeta):
    """One interaction with a search result; a click unless ``event_type`` says otherwise."""

    event_id: Id = Field(description="Unique within the session; a repeated id is dropped.")
    object_id: Id
    event_type: EventType = "click"
    created_at: Timestamp = None


class EventsIn(RequestModel):
    """Events to add to a session. All or nothing: one bad event refuses the request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "c327c30bd3db459093e5f5d254bdd144",
                    "events": [
                        {
                            "event_id": "472cc4232af2449a97317d0057c9a2cf",
                            "object_id": "2f827cbb9fe544cdaca44b2dafd37785",
                            "item_info": {},
                            "event_type": "click",
                        },
                        {
                            "event_id": "124b6bc39e9f43e7b5be6b992d94f505",
                            "object_id": "2f827cbb9fe544cdaca44b2dafd37785",
                            "item_info": {},
                        },
                        {
                            "event_id": "b0f4adcac63b4a35a02a45f06b0b1cb9",
                            "object_id": "e000f005dc1343ea8ddf234c557832a5",
                        },
                    ],
                }
            ]
        }
    )

    session_id: Id
    events: Annotated[list[EventIn], Limited(_most_events)]


class SessionAccepted(BaseModel):
    """The session was acknowledged by Kafka."""

    session_id: str
    created_at: int = Field(description="As published: the client's, or the server's time")


class EventsAccepted(BaseModel):
    """The events were acknowledged by Kafka."""

    session_id: str
    accepted: int = Field(description="How many events were published")


class SessionRef(RequestModel):
    """Names a registered session."""

    session_id: Id


class ReleaseIn(RequestModel):
    """Release everything gathered so far as a batch."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"release_id": "090bda77a5e048d59a1e310dc20fbd6d"}]}
    )

    release_id: Id = Field(description="The idempotency key: the same id, the same batch.")
    min_idle_seconds: Annotated[int, WholeNumber] = Field(
        default=0,
        ge=0,
        le=MAX_IDLE_SECONDS,
        description="Sessions active more recently than this wait for the next release.",
    )


class ForgetIn(RequestModel):
    """Erase every session of a user."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "b604bbb1a57a418d925ebc9d615de99a"}]}
    )

    user_id: Id = Field(
        description="As the sessions gave it (pseudonymised here like theirs when "
        "CLICKSTREAM_USER_ID_KEY is set)"
    )


@dataclass(frozen=True, slots=True)
class RequestModels:
    """The request classes validating with one set of limits; each is the class of the same
    name above, or a subclass of it keeping its name (so the OpenAPI document names them
    alike)."""

    limits: Limits
    SessionIn: type[SessionIn]
    EventsIn: type[EventsIn]
    SessionRef: type[SessionRef]
    ReleaseIn: type[ReleaseIn]
    ForgetIn: type[ForgetIn]


@functools.cache
def request_models(limits: Limits) -> RequestModels:
    """The request classes with ``limits``: the gateway and the library validate with these."""
    return RequestModels(
        limits,
        with_limits(SessionIn, limits),
        with_limits(EventsIn, limits),
        with_limits(SessionRef, limits),
        with_limits(ReleaseIn, limits),
        with_limits(ForgetIn, limits),
    )


_Model = TypeVar("_Model", bound=BaseModel)


def with_limits(model: type[_Model], limits: Limits) -> type[_Model]:
    """``model`` validating with ``limits``: ``model`` itself when it already does (nothing
    :class:`Limited` in its fields, nor in the models they hold, is at other limits), else a
    subclass of the same name and docstring redeclaring the fields that differ."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _at(info.annotation, limits)
        metadata = [_at(item, limits) for item in info.metadata]
        if annotation is info.annotation and _same(metadata, info.metadata):
            continue
        field = copy(info)
        field.annotation, field.metadata = annotation, metadata
        fields[name] = (annotation, field)
    if not fields:
        return model
    rebuilt: type[_Model] = create_model(
        model.__name__, __base__=model, __doc__=model.__doc__, **fields
    )
    return rebuilt


def _at(hint: Any, limits: Limits) -> Any:
    """A type or an item of ``Annotated`` metadata, with what is :class:`Limited` in it (its
    arguments, the models it names) at ``limits``; the same object if nothing changes."""
    if isinstance(hint, Limited):
        return hint.at(limits)
    origin = get_origin(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return with_limits(hint, limits)
        return hint
    args = get_args(hint)
    new = tuple(_at(arg, limits) for arg in args)
    if _same(new, args):
        return hint
    if origin is Annotated:
        return Annotated[new]
    if origin is Union or origin is types.UnionType:
        return Union[new]  # noqa: UP007 - built from a tuple of types
    return origin[new]


def _same(these: Any, those: Any) -> bool:
    return all(a is b for a, b in zip(these, those, strict=True))


class IrrelevantAccepted(BaseModel):
    session_id: str
    is_irrelevant: bool


class BatchOut(BaseModel):
    """A batch: its status and, once released, its counts. Times are UTC seconds."""

    batch_id: str = Field(description="24 hex characters: an ObjectId")
    release_id: str
    status: str = Field(
        description="releasing, then released; expiring, then expired once past "
        "CLICKSTREAM_BATCH_RETENTION_DAYS (the counts stay, the sessions are gone)"
    )
    requested_at: int
    released_at: int | None
    session_count: int | None
    event_count: int | None
    repeat_session_count: int | None = Field(
        description="Sessions released before, back with new events"
    )
    partitions_done: int
    partition_count: int
    done_partitions: list[int] = Field(
        description="The partitions that wrote and reported their part of the batch"
    )
    waiting_partitions: list[int] = Field(
        description="The partitions the batch still waits for: a release still waiting "
        "after CLICKSTREAM_RELEASE_HEAL_SECONDS has its markers sent to them again"
    )
    heal_count: int = Field(description="How many times the markers were sent again")
    unreleasable_session_count: int = Field(
        default=0,
        description="Sessions of the release MongoDB refused to store: not in the batch, "
        "each in the dead-letter topic with the reason (snapshot_refused)",
    )
    unreleasable_session_ids: list[str] = Field(default_factory=list)
    content_digest: str | None = Field(
        default=None,
        description="SHA-256 (hex) of the batch's documents as written, once released: "
        "readers check what they read against it (null for batches from before digests)",
    )
    erased_session_count: int = Field(
        default=0,
        description="Sessions erased from the batch since (forgotten users); the counts "
        "are of the sessions it holds now",
    )


class ErasureOut(BaseModel):
    """A forget request's receipt. Times are UTC seconds."""

    request_id: str
    status: str = Field(description="forgetting, then forgotten")
    requested_at: int
    done_at: int | None
    partitions_done: int = Field(description="Partitions that removed the sessions from state")
    partition_count: int
    table_session_count: int = Field(description="Sessions removed from the stream's tables")
    batch_session_counts: dict[str, int] = Field(
        description="Sessions removed from each released batch, by batch_id"
    )


class EventOut(BaseModel):
    event_id: str
    object_id: str
    event_type: str
    created_at: int
    meta: JsonObject | None


class SearchResultOut(BaseModel):
    object_id: str
    rank: float | None
    meta: JsonObject | None


class SortByOut(BaseModel):
    field: str
    order: Literal["asc", "desc"]
    force_not_payload: bool


class SessionOut(BaseModel):
    """A session with its events, as the stream holds it."""

    session_id: str
    search_query: str
    search_results: list[SearchResultOut]
    search_meta: JsonObject | None
    payload_filter: JsonObject | None = None
    sort_by: SortByOut | None = None
    user_id: str | None
    created_at: int
    is_irrelevant: bool
    event_count: int
    events: list[EventOut]


class BatchEventOut(EventOut):
    is_new: bool = Field(
        default=True, description="Not in the session's previous batch (always true if none)"
    )


class BatchSessionOut(SessionOut):
    session_number: int
    is_repeat: bool = Field(description="The session was in an earlier batch")
    previous_batch_id: str | None = Field(
        default=None, description="The batch this session was in before, for a repeat"
    )
    new_event_count: int = Field(
        description="Events new since the previous batch: those marked is_new"
    )
    events: list[BatchEventOut]  # type: ignore[assignment]


class BatchSessionsPage(BaseModel):
    batch_id: str
    last_number: int = Field(description="Pass as after_number for the next page")
    sessions: list[BatchSessionOut]

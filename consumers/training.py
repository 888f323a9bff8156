"""Training examples from a batch's sessions: what a fine-tuning job learns from.

Rows of three shapes, each built from one session as ``BatchStore.iter_sessions`` reads it:

- ``training``: one row per (session, shown result), labelled by the cascade rule, as
  learning-to-rank tools label clicks (Metarank): a result with an event is ``positive``;
  one shown above the session's last clicked result without an event of its own is
  ``negative`` (the user saw it and passed it by); one shown below it is ``unjudged`` (the
  user may never have seen it). A session without events has every result ``unjudged``.
  Any event on a result counts as a click, whatever its ``event_type``, as the original
  service counts them; events on objects the session did not show are left out.
  ``position`` is the 0-based place the result was shown at, kept for position-bias
  correction.
- ``pairs``: one (query, positive) row per positive result, for sentence-transformers'
  ranking losses (MultipleNegativesRankingLoss and kin).
- ``triplets``: (query, positive, negative) rows: for each positive, up to
  ``negatives_per_positive`` negatives of the same session, sampled without replacement by a
  generator seeded with the batch, session and object ids, so the same batch always gives
  the same rows.

``is_irrelevant`` is the original's reading: the session was marked irrelevant, or got no
click. Labels always come from all of a session's events. Options: ``only_new_clicks`` leaves
out what a job trained on an earlier batch has seen: a repeat session without an event new in
this batch, and a positive all of whose clicks are old (its negatives and unjudged rows stay:
they judge the new positives); ``skip_irrelevant`` leaves out irrelevant sessions.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from batches.public import PublicBatchSession, PublicEvent
    from schemas.records import SortBy


class RowShape(StrEnum):
    SESSIONS = "sessions"
    TRAINING = "training"
    PAIRS = "pairs"
    TRIPLETS = "triplets"


class Label(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNJUDGED = "unjudged"


class TrainingRow(TypedDict):
    """A row of the ``training`` shape: one (session, shown result); free-form objects as
    JSON text."""

    batch_id: str
    session_number: int
    session_id: str
    user_id: str | None
    query: str
    search_meta: str | None
    payload_filter: str | None
    sort_by: SortBy | None
    object_id: str
    object_meta: str | None
    position: int
    rank: float | None
    clicks: int
    new_clicks: int
    first_click_at: int | None
    label: str
    is_irrelevant: bool
    is_repeat: bool


class _Example(TypedDict):
    batch_id: str
    session_id: str
    query: str
    search_meta: str | None


class PairRow(_Example):
    """A row of the ``pairs`` shape: (query, positive)."""

    positive_id: str
    positive_meta: str | None
    positive_position: int


class TripletRow(PairRow):
    """A row of the ``triplets`` shape: (query, positive, negative)."""

    negative_id: str
    negative_meta: str | None
    negative_position: int


ShapedRow = TrainingRow | PairRow | TripletRow


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    only_new_clicks: bool = False
    skip_irrelevant: bool = False
    negatives_per_positive: int = 1


def _json_text(value: object) -> str | None:
    """Free-form objects as JSON text: JSON numbers (integers beyond 64 bits among them)
    have no single Arrow type."""
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def training_rows(
    batch_id: str, session: PublicBatchSession, options: TrainingOptions
) -> list[TrainingRow]:
    """The session's rows of the ``training`` shape, in the order its results were shown."""
    rows = _rows(batch_id, session, options)
    if not options.only_new_clicks:
        return rows
    if session["is_repeat"] and not any(e.get("is_new", True) for e in session["events"]):
        return []
    return [row for row in rows if row["label"] != Label.POSITIVE or row["new_clicks"]]


def _rows(
    batch_id: str, session: PublicBatchSession, options: TrainingOptions
) -> list[TrainingRow]:
    events = session["events"]
    by_object: dict[str, list[PublicEvent]] = {}
    for event in events:
        by_object.setdefault(event["object_id"], []).append(event)
    results = session["search_results"]
    clicked_positions = [i for i, r in enumerate(results) if r["object_id"] in by_object]
    last_click = clicked_positions[-1] if clicked_positions else -1
    irrelevant = bool(session["is_irrelevant"]) or not clicked_positions
    if irrelevant and options.skip_irrelevant:
        return []
    rows: list[TrainingRow] = []
    for position, result in enumerate(results):
        clicks = by_object.get(result["object_id"], [])
        if clicks:
            label = Label.POSITIVE
        elif position < last_click:
            label = Label.NEGATIVE
        else:
            label = Label.UNJUDGED
        rows.append(
            {
                "batch_id": batch_id,
                "session_number": session["session_number"],
                "session_id": session["session_id"],
                "user_id": session["user_id"],
                "query": session["search_query"],
                "search_meta": _json_text(session["search_meta"]),
                "payload_filter": _json_text(session["payload_filter"]),
                "sort_by": session["sort_by"],
                "object_id": result["object_id"],
                "object_meta": _json_text(result["meta"]),
                "position": position,
                "rank": result["rank"],
                "clicks": len(clicks),
                "new_clicks": sum(1 for e in clicks if e.get("is_new", True)),
                "first_click_at": min((e["created_at"] for e in clicks), default=None),
                "label": label.value,
                "is_irrelevant": irrelevant,
                "is_repeat": session["is_repeat"],
            }
        )
    return rows


def _example(row: TrainingRow) -> _Example:
    return {
        "batch_id": row["batch_id"],
        "session_id": row["session_id"],
        "query": row["query"],
        "search_meta": row["search_meta"],
    }


def _pair(row: TrainingRow) -> PairRow:
    return {
        **_example(row),
        "positive_id": row["object_id"],
        "positive_meta": row["object_meta"],
        "positive_position": row["position"],
    }


def pair_rows(rows: list[TrainingRow]) -> list[PairRow]:
    """(query, positive) rows from one session's training rows."""
    return [_pair(row) for row in rows if row["label"] == Label.POSITIVE]


def triplet_rows(rows: list[TrainingRow], per_positive: int) -> list[TripletRow]:
    """(query, positive, negative) rows from one session's training rows; a positive without
    a negative in its session gives none."""
    negatives = [row for row in rows if row["label"] == Label.NEGATIVE]
    out: list[TripletRow] = []
    for positive in (row for row in rows if row["label"] == Label.POSITIVE):
        seed = f"{positive['batch_id']}/{positive['session_id']}/{positive['object_id']}"
        # Sampling, not security: the seed makes the rows the same on every export.
        sample = random.Random(seed).sample(negatives, min(per_positive, len(negatives)))  # noqa: S311
        pair = _pair(positive)
        out.extend(
            {
                **pair,
                "negative_id": negative["object_id"],
                "negative_meta": negative["object_meta"],
                "negative_position": negative["position"],
            }
            for negative in sorted(sample, key=lambda r: r["position"])
        )
    return out


def shaped_rows(
    batch_id: str,
    sessions: Iterable[PublicBatchSession],
    shape: RowShape,
    options: TrainingOptions,
) -> Iterator[list[TrainingRow] | list[PairRow] | list[TripletRow]]:
    """Each session's rows of the shape (possibly none), in session order."""
    for session in sessions:
        rows: list[TrainingRow] | list[PairRow] | list[TripletRow]
        rows = training = training_rows(batch_id, session, options)
        if shape is RowShape.PAIRS:
            rows = pair_rows(training)
        elif shape is RowShape.TRIPLETS:
            rows = triplet_rows(training, options.negatives_per_positive)
        yield rows


def sort_by_type() -> Any:
    """The Arrow type of a session's ``sort_by``."""
    import pyarrow as pa  # noqa: PLC0415 - an optional extra

    return pa.struct(
        [
            pa.field("field", pa.string(), nullable=False),
            pa.field("order", pa.string(), nullable=False),
            pa.field("force_not_payload", pa.bool_(), nullable=False),
        ]
    )


def arrow_schema(shape: RowShape) -> Any:
    """The Arrow schema of rows of a training shape."""
    import pyarrow as pa  # noqa: PLC0415 - an optional extra

    example = [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("search_meta", pa.string()),
    ]
    positive = [
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive_meta", pa.string()),
        pa.field("positive_position", pa.int64(), nullable=False),
    ]
    if shape is RowShape.PAIRS:
        return pa.schema(example + positive)
    if shape is RowShape.TRIPLETS:
        return pa.schema(
            example
            + positive
            + [
                pa.field("negative_id", pa.string(), nullable=False),
                pa.field("negative_meta", pa.string()),
                pa.field("negative_position", pa.int64(), nullable=False),
            ]
        )
    return pa.schema(
        [
            pa.field("batch_id", pa.string(), nullable=False),
            pa.field("session_number", pa.int64(), nullable=False),
            pa.field("session_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string()),
            pa.field("query", pa.string(), nullable=False),
            pa.field("search_meta", pa.string()),
            pa.field("payload_filter", pa.string()),
            pa.field("sort_by", sort_by_type()),
            pa.field("object_id", pa.string(), nullable=False),
            pa.field("object_meta", pa.string()),
            pa.field("position", pa.int64(), nullable=False),
            pa.field("rank", pa.float64()),
            pa.field("clicks", pa.int64(), nullable=False),
            pa.field("new_clicks", pa.int64(), nullable=False),
            pa.field("first_click_at", pa.int64()),
            pa.field("label", pa.string(), nullable=False),
            pa.field("is_irrelevant", pa.bool_(), nullable=False),
            pa.field("is_repeat", pa.bool_(), nullable=False),
        ]
    )

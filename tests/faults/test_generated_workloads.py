"""Generated workloads at and near every documented limit, against the real pipeline: no
input the API accepts stops it, and every acknowledged click is released exactly once, in
the first release after it.

Each example is a random mix of registrations, clicks (before their session too), retried
requests, irrelevant marks and releases, with ids of 1 to 128 characters, unicode, ``meta``
nested deep or hundreds of KB large, requests of up to the event limit and bodies near the
1 MB limit (a body over it must be refused with 413, and then counts for nothing). After
each release, the batch must hold, as new events, exactly the clicks acknowledged since the
previous one (for sessions registered by then); at the end the worker must be the process
it was and still join a new click within seconds.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.local.servers import is_running
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import EVENTS_URL, IRRELEVANT_URL, SESSION_URL

if TYPE_CHECKING:
    from tests.utils.pipeline import Pipeline

MAX_ID = 128  # CLICKSTREAM_MAX_ID_LENGTH
MAX_EVENTS = 1000  # CLICKSTREAM_MAX_EVENTS_PER_REQUEST
MAX_BODY = 1_000_000  # CLICKSTREAM_MAX_BODY_BYTES
SESSIONS = 4

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "ü"}
    for level in range(depth):
        value = {f"l{level}": value}
    return value


_meta = st.one_of(
    st.none(),
    st.dictionaries(_text, st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3)), max_size=4),
    st.integers(min_value=1, max_value=90).map(_nested),  # deep
    st.integers(min_value=1, max_value=999_000).map(lambda n: {"pad": "m" * n}),  # large
)
_id_length = st.one_of(st.just(1), st.just(MAX_ID), st.integers(min_value=1, max_value=MAX_ID))


@st.composite
def _operation(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["register", "events", "events", "retry", "irrelevant", "release"]))
    session = draw(st.integers(min_value=0, max_value=SESSIONS - 1))
    if kind == "events":
        count = draw(st.one_of(st.integers(1, 5), st.just(MAX_EVENTS), st.just(MAX_EVENTS + 1)))
        return kind, session, count, draw(_meta), draw(_id_length)
    if kind == "register":
        return kind, session, draw(_meta), draw(st.integers(0, 30))
    return kind, session


@dataclass
class Model:
    """What the client side knows was acknowledged, and what each release must hold."""

    ids: list[str]
    registered: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    acked: dict[int, set[str]] = field(default_factory=dict)
    pending: dict[int, set[str]] = field(default_factory=dict)
    last_events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def accept(self, session: int, events: list[dict[str, Any]]) -> None:
        new = {e["event_id"] for e in events} - self.acked.setdefault(session, set())
        self.acked[session] |= new
        self.pending.setdefault(session, set()).update(new)
        self.last_events[session] = events

    def expected(self) -> dict[str, set[str]]:
        """Session id -> the new event ids the next release must hold for it."""
        due = {}
        for session in self.registered:
            fresh = self.pending.get(session, set())
            if session not in self.released or fresh:
                due[self.ids[session]] = set(fresh)
        return due

    def released_all(self, due: dict[str, set[str]]) -> None:
        for session in self.registered:
            if self.ids[session] in due:
                self.released.add(session)
                self.pending[session] = set()


_issued = iter(range(0x4E00, 0x9FFF))  # one CJK character per session: unique, any length


def _session_id(length: int) -> str:
    """A session id of exactly ``length`` characters, unique in the test run."""
    return (chr(next(_issued)) + "ş" * MAX_ID)[:length]


def _event_id(length: int) -> str:
    """An event id of ``length`` characters: unique from 32 on, short ones may repeat (a
    repeat within a session is a duplicate, as a retried click is)."""
    return (uuid.uuid4().hex + "é" * MAX_ID)[:length]


def _post(pipeline: Pipeline, url: str, body: dict[str, Any]) -> tuple[Any, int]:
    """POST ``body`` as compact UTF-8 JSON; the answer and the body's size in bytes."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    answer = pipeline.gateway.post(
        url, content=content, headers={"Content-Type": "application/json"}
    )
    return answer, len(content)


def _run(pipeline: Pipeline, model: Model, operation: tuple[Any, ...]) -> None:
    kind, session = operation[0], operation[1]
    session_id = model.ids[session]
    if kind == "register":
        _, _, meta, results = operation
        body = session_body(
            session_id=session_id,
            search_meta=meta,
            search_query="ünïcode 🔍 " * 3,
            search_results=[{"object_id": f"o{n}", "rank": n / 7} for n in range(results)],
            user_id="u" * MAX_ID,
        )
        answer, size = _post(pipeline, SESSION_URL, body)
        if size > MAX_BODY:
            assert answer.status_code == 413, answer.text
            return
        assert answer.status_code == 200, answer.text
        model.registered.add(session)
    elif kind in ("events", "retry"):
        if kind == "retry":
            events = model.last_events.get(session)
            if not events:
                return
        else:
            _, _, count, meta, id_length = operation
            events = [event_body(event_id=_event_id(id_length), meta=meta) for _ in range(count)]
        body = {"session_id": session_id, "events": events}
        answer, size = _post(pipeline, EVENTS_URL, body)
        if size > MAX_BODY:
            assert answer.status_code == 413, answer.text
        elif len(events) > MAX_EVENTS:
            assert answer.status_code == 422, answer.text
        else:
            assert answer.status_code == 200, answer.text
            model.accept(session, events)
    elif kind == "irrelevant":
        if session in model.registered:
            answer, _ = _post(pipeline, IRRELEVANT_URL, {"session_id": session_id})
            assert answer.status_code == 200, answer.text
    else:
        _release(pipeline, model)


def _release(pipeline: Pipeline, model: Model) -> None:
    due = model.expected()
    answer = pipeline.release(new_id())
    if not due:
        assert answer.status_code == 404, answer.text
        return
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert batch["unreleasable_session_count"] == 0
    released = pipeline.batch_sessions(batch["batch_id"], page_size=50)
    found = {s["session_id"]: {e["event_id"] for e in s["events"] if e["is_new"]} for s in released}
    assert found == due, "exactly the clicks acknowledged since the last release, as new"
    for copy in released:
        ids = [e["event_id"] for e in copy["events"]]
        assert len(ids) == len(set(ids)), "no click twice"
    model.released_all(due)


@settings(
    max_examples=int(os.environ.get("GENERATED_WORKLOAD_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    operations=st.lists(_operation(), min_size=3, max_size=10),
    lengths=st.lists(_id_length, min_size=SESSIONS, max_size=SESSIONS),
)
def test_generated_workloads_release_every_click_once_and_stop_nothing(
    pipeline: Pipeline, operations: list[tuple[Any, ...]], lengths: list[int]
) -> None:
    worker = pipeline.workers[0]
    pid = worker.pid
    model = Model(ids=[_session_id(length) for length in lengths])
    for operation in operations:
        _run(pipeline, model, operation)
    for session in range(SESSIONS):  # clicks that came before their session join it now
        if session not in model.registered:
            _run(pipeline, model, ("register", session, None, 1))
    _release(pipeline, model)

    assert pid is not None
    assert worker.pid == pid
    assert is_running(pid), "the worker never restarted"
    later = Model(ids=[_session_id(32)])
    _run(pipeline, later, ("register", 0, None, 1))
    click = event_body()
    pipeline.add_events(later.ids[0], [click])
    later.accept(0, [click])
    assert pipeline.wait_session(later.ids[0], events=1, timeout=10)["event_count"] == 1
    _release(pipeline, later)

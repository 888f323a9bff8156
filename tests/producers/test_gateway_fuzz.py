"""schemathesis against the running gateway's OpenAPI document, every check on: no 5xx,
every answer documented, schema-valid requests accepted and schema-violating ones refused;
then nothing a refused request sent is on the topics.

The gateway and a stream worker run as processes of their own on the test servers. Bounded:
at most ``FUZZ_EXAMPLES`` generated cases per operation and mode, plus the document's
examples and schemathesis' coverage cases.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
import schemathesis

from clickstream.settings import Settings
from deploy.kafka_topics import ensure_topics
from deploy.local.servers import LocalGateway
from schemas import AvroCodec, Topics
from tests.fixtures import TEST_CONTROL_SECRET, TEST_INTERNAL_TOKEN
from tests.utils.kafka import TopicReader
from tests.utils.pipeline import Worker

if TYPE_CHECKING:
    from collections.abc import Iterator

FUZZ_EXAMPLES = int(os.environ.get("CLICKSTREAM_FUZZ_EXAMPLES", "60"))
API = "/api/v1/clickstream"
# Refused before anything is published.
REFUSED = {400, 401, 405, 413, 422}


def _now_for_integer_created_at(body: Any) -> Any:
    """``created_at`` is accepted within a window around the server's clock, which the
    document states in words but cannot give as bounds: an integer one is sent as now, so
    a schema-valid request stays valid (no integer violates the schema). Values of other
    types are left, to be refused."""

    def fix(item: Any) -> Any:
        value = item.get("created_at") if isinstance(item, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return {**item, "created_at": int(time.time())}
        return item

    body = fix(body)
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        body = {**body, "events": [fix(event) for event in body["events"]]}
    return body


@dataclass
class Accepted:
    """What the gateway said it published."""

    sessions: int = 0
    events: int = 0
    irrelevant: int = 0
    release_ids: set[str] = field(default_factory=set)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def record(self, method: str, path: str, body: Any, status: int, answer: Any) -> None:
        self.statuses[(f"{method} {path}", status)] += 1
        if status in REFUSED or method != "POST":
            return
        if path == f"{API}/session" and status == 200:
            self.sessions += 1
        elif path == f"{API}/session/events" and status == 200:
            self.events += answer["accepted"]
        elif path == f"{API}/session/irrelevant" and status == 200:
            self.irrelevant += 1
        elif path == f"{API}/internal/batch/release":
            self.release_ids.add(body["release_id"])


@dataclass
class FuzzTarget:
    settings: Settings
    url: str
    accepted: Accepted


@pytest.fixture(scope="module")
def fuzz_target(
    kafka_bootstrap: str, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    prefix = f"fuzz-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        mongodb_uri=mongodb_uri,  # type: ignore[arg-type]
        mongodb_database=prefix.replace("-", "_"),
        topic_prefix=f"{prefix}.",
        internal_tokens=[TEST_INTERNAL_TOKEN],  # type: ignore[list-item]
        control_secret=[TEST_CONTROL_SECRET],  # type: ignore[list-item]
        release_wait_seconds=5,
        tick_interval_seconds=1,
    )
    ensure_topics(settings)
    worker = Worker(settings, tmp_path_factory.mktemp("fuzz-worker"), f"fuzz-{prefix}").start()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    gateway = LocalGateway(
        tmp_path_factory.mktemp("fuzz-gateway"),
        env={
            **inherited,
            **settings.environment(),
            "CLICKSTREAM_WORKER_URLS": worker.url,
            "CLICKSTREAM_LOG_LEVEL": "WARNING",
        },
    )
    try:
        gateway.start()
        yield FuzzTarget(settings, gateway.address, Accepted())
    finally:
        gateway.stop()
        worker.stop()


@pytest.fixture(scope="module")
def gateway_schema(fuzz_target: FuzzTarget) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_target.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)
def test_the_gateway_answers_as_its_document_says(
    case: schemathesis.Case, fuzz_target: FuzzTarget
) -> None:
    if isinstance(case.body, dict):
        case.body = _now_for_integer_created_at(case.body)
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}, timeout=60
    )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    fuzz_target.accepted.record(
        case.method.upper(), case.path, case.body, response.status_code, answer
    )


def test_nothing_a_refused_request_sent_is_on_the_topics(
    fuzz_target: FuzzTarget, codec: AvroCodec
) -> None:
    """Runs after the fuzzing above (same module): what is on the topics is exactly what
    the gateway answered 2xx for."""
    accepted = fuzz_target.accepted
    refused = sum(n for (_, status), n in accepted.statuses.items() if status in REFUSED)
    assert accepted.sessions > 0, "the fuzzing ran first and had sessions accepted"
    assert refused > 0
    reader = TopicReader(fuzz_target.settings.kafka_common_config(), codec)
    topics = Topics(fuzz_target.settings.topic_prefix)
    sessions = Counter(m.name for m in reader.read(topics.sessions))
    registrations = reader.read_registrations(topics.sessions)
    events = reader.read_events(topics.events)
    requests = [m for m in reader.read(topics.releases) if m.name == "clickstream.ReleaseRequested"]

    assert len(registrations) == accepted.sessions
    assert sessions["clickstream.SessionMarkedIrrelevant"] == accepted.irrelevant
    assert len(events) == accepted.events
    assert {m.record["release_id"] for m in requests} <= accepted.release_ids

"""The worker's web server serves only what the gateway needs, on loopback; the worker's
Kafka clients take the same security settings as every other client (librdkafka's as they
are; the one aiokafka client that takes a stopping worker out of its group, mapped)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import certifi
import httpx
import pytest

from stream_app.exceptions import UnsupportedKafkaSecurityError
from stream_app.kafka_security import aiokafka_security
from tests.utils.payloads import event_body, session_body
from tests.utils.pipeline import Pipeline, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from clickstream.settings import Settings
    from tests.utils.pipeline import Worker


def test_plaintext_and_client_tuning_need_no_credentials() -> None:
    assert aiokafka_security({}) == {}
    assert aiokafka_security({"security.protocol": "PLAINTEXT", "client.id": "x"}) == {}


def test_sasl_over_tls_maps_to_aiokafka_sasl_with_a_verifying_context() -> None:
    options = aiokafka_security(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "clickstream-worker",
            "sasl.password": "s3cret",
            "ssl.ca.location": certifi.where(),
        }
    )

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "clickstream-worker",
        "s3cret",
    )
    context = options["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_sasl_plaintext_and_plain_tls_map_to_their_aiokafka_settings() -> None:
    sasl = aiokafka_security(
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": "u",
            "sasl.password": "p",
        }
    )
    tls = aiokafka_security(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": certifi.where(),
            "ssl.endpoint.identification.algorithm": "none",
        }
    )

    assert (sasl["security_protocol"], sasl["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert "ssl_context" not in sasl
    assert tls["security_protocol"] == "SSL"
    assert tls["ssl_context"].check_hostname is False
    assert tls["ssl_context"].verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "extra",
    [
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"},
        {"security.protocol": "SSL", "ssl.keystore.location": "/k.p12"},
        {"security.protocol": "CARRIER_PIGEON"},
    ],
    ids=["oauth", "keystore", "unknown-protocol"],
)
def test_security_the_worker_cannot_apply_stops_it_rather_than_connect_with_less(
    extra: dict[str, str],
) -> None:
    with pytest.raises(UnsupportedKafkaSecurityError):
        aiokafka_security(extra)


def test_a_worker_with_plaintext_extra_config_runs_and_serves_only_what_the_gateway_needs(
    settings_factory: Callable[..., Settings], worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_factory(
        kafka_extra_config={"security.protocol": "PLAINTEXT", "client.id": "clickstream-test"}
    )
    worker = worker_factory(settings).start()
    session = session_body()
    with gateway_client(settings, [worker]) as gateway:
        pipeline = Pipeline(settings, gateway, [worker])
        pipeline.register(session)
        pipeline.add_events(session["session_id"], [event_body()])
        shown = pipeline.wait_session(session["session_id"], events=1)

        pages = {
            path: httpx.get(f"{worker.url}{path}", timeout=5).status_code
            for path in ("/table/", "/table/sessions/", "/router/", "/graph/", "/stats/", "/")
        }
        direct = httpx.get(
            f"{worker.url}/sessions/", params={"session_id": session["session_id"]}, timeout=5
        )
        ready = httpx.get(f"{worker.url}/ready/", timeout=5)

    assert shown["event_count"] == 1
    assert pages == dict.fromkeys(pages, 404), "no table dumps or debug pages"
    assert direct.status_code == 200
    assert ready.status_code == 200
    with pytest.raises(httpx.ConnectError):  # bound to 127.0.0.1 alone, not every address
        httpx.get(f"http://127.0.0.2:{worker.port}/ready/", timeout=5)

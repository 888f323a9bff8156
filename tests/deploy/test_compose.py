"""deploy/compose/compose.yaml, checked offline: the Compose specification's JSON schema
(as vendored by check-jsonschema), and what the schema cannot see (references between
services, settings the code knows, the Kafka and MongoDB clusters' shape)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from clickstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
# Variables read outside the settings object.
OTHER_VARIABLES = {"CLICKSTREAM_LOG_LEVEL", "CLICKSTREAM_GATEWAY_URL"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def compose_spec_schema() -> dict[str, Any]:
    # Found without importing check_jsonschema: its CLI does not import beside faust's click.
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None
    assert spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    schema = package / "builtin_schemas" / "vendor" / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(schema.read_text(encoding="utf-8"))
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def interpolated(value: str, shell: dict[str, str]) -> str:
    """``value`` as compose fills it from the shell's variables (``${NAME:-default}``)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: shell.get(m.group(1)) or m.group(2), value)


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(compose_spec_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {"gateway": {"image": "x", "ports": {"not": "a list"}}}}
    assert not jsonschema.Draft7Validator(compose_spec_schema()).is_valid(broken)


def test_services_refer_to_what_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on unknown {needed}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    build = services["gateway-1"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_every_clickstream_variable_is_a_setting(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {f"CLICKSTREAM_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    for name, service in services.items():
        unknown = {key for key in environment(service) if key.startswith("CLICKSTREAM_")} - known
        assert not unknown, f"{name}: {unknown}"
    shell = {
        "CLICKSTREAM_INTERNAL_TOKENS": secrets.token_urlsafe(32),
        "CLICKSTREAM_CONTROL_SECRET": secrets.token_urlsafe(32),
    }
    for name in ("gateway-1", "gateway-2", "worker-1", "worker-2", "topics"):
        # The settings validate (types, bounds) as the process reads them.
        with monkeypatch.context() as patched:
            for variable in (v for v in os.environ if v.startswith("CLICKSTREAM_")):
                patched.delenv(variable)
            for variable, value in environment(services[name]).items():
                if variable.startswith("CLICKSTREAM_"):
                    patched.setenv(variable, interpolated(value, {}))
            # Without the secrets in the shell: refused at start, saying how to make them.
            with pytest.raises(ValidationError, match="a placeholder, not a secret"):
                Settings()
            for variable, value in environment(services[name]).items():
                if variable.startswith("CLICKSTREAM_"):
                    patched.setenv(variable, interpolated(value, shell))
            settings = Settings()
        assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert settings.topic_replication_factor == 3


def test_kafka_is_three_kraft_brokers_with_three_copies(
    services: dict[str, dict[str, Any]],
) -> None:
    brokers = {name: environment(s) for name, s in services.items() if name.startswith("kafka-")}
    assert len(brokers) == 3
    for name, env in brokers.items():
        assert services[name]["image"].startswith("apache/kafka:")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = dict(
            voter.split("@") for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        )
        assert voters == {"1": "kafka-1:9093", "2": "kafka-2:9093", "3": "kafka-3:9093"}
        assert voters[env["KAFKA_NODE_ID"]] == f"{name}:9093"
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1
    topics = environment(services["topics"])
    assert topics["CLICKSTREAM_TOPIC_REPLICATION_FACTOR"] == "3"
    assert services["topics"]["command"] == ["topics"]


def test_mongodb_is_a_three_member_replica_set_initiated_once(
    services: dict[str, dict[str, Any]],
) -> None:
    members = [name for name in services if re.fullmatch(r"mongo-\d", name)]
    assert len(members) == 3
    for name in members:
        assert services[name]["command"][-3:] == ["--replSet", "rs0", "--bind_ip_all"]
    script = (COMPOSE_DIR / "mongo-init.js").read_text()
    for name in members:
        assert f'"{name}:27017"' in script
    uri = environment(services["gateway-1"])["CLICKSTREAM_MONGODB_URI"]
    assert uri == "mongodb://mongo-1:27017,mongo-2:27017,mongo-3:27017/?replicaSet=rs0"


def test_two_gateways_and_two_workers_with_static_ids(
    services: dict[str, dict[str, Any]],
) -> None:
    gateways = [s for name, s in services.items() if name.startswith("gateway-")]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert len(gateways) == 2
    assert len(workers) == 2
    assert {environment(w)["CLICKSTREAM_WORKER_ID"] for w in workers.values()} == set(workers)
    for name, worker in workers.items():
        env = environment(worker)
        assert env["CLICKSTREAM_WORKER_WEB_HOST"] == name  # reachable by the other worker
        assert f"http://{name}:{env['CLICKSTREAM_WORKER_WEB_PORT']}" in env[
            "CLICKSTREAM_WORKER_URLS"
        ].split(",")
    for gateway in gateways:
        assert gateway["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        # One process per container: its drain is the documented one.
        assert "CLICKSTREAM_HTTP_WORKERS" not in environment(gateway)


def test_prometheus_scrapes_every_gateway_and_worker(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = set()
    for name, service in services.items():
        env = environment(service)
        if name.startswith("gateway-"):
            expected.add(f"{name}:{env['CLICKSTREAM_HTTP_PORT']}")
        elif name.startswith("worker-"):
            expected.add(f"{name}:{env['CLICKSTREAM_WORKER_WEB_PORT']}")
    assert targets == expected


def test_ports_are_on_loopback_and_memory_is_bounded(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("mem_limit"), f"{name} has no memory limit"
        for port in service.get("ports", []):
            assert interpolated(port, {}).startswith("127.0.0.1:"), f"{name}: {port}"
            everywhere = {"CLICKSTREAM_PUBLISH_ADDRESS": "0.0.0.0"}  # noqa: S104 - asked for
            assert interpolated(port, everywhere).startswith(
                everywhere["CLICKSTREAM_PUBLISH_ADDRESS"]
            )


def test_grafana_has_no_admin_with_the_default_password(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = services["grafana"]["environment"]
    assert environment["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert environment["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment


def test_each_broker_has_a_listener_the_host_reaches(
    services: dict[str, dict[str, Any]],
) -> None:
    brokers = {name: service for name, service in services.items() if name.startswith("kafka-")}
    ports = set()
    for name, broker in brokers.items():
        environment = broker["environment"]
        listeners = dict(
            listener.split("://") for listener in environment["KAFKA_LISTENERS"].split(",")
        )
        advertised = dict(
            listener.split("://")
            for listener in environment["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
        host, port = advertised["EXTERNAL"].split(":")
        assert (host, listeners["EXTERNAL"]) == ("localhost", f":{port}"), name
        assert "EXTERNAL:PLAINTEXT" in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        assert broker["ports"] == [f"${{CLICKSTREAM_PUBLISH_ADDRESS:-127.0.0.1}}:{port}:{port}"]
        assert advertised["PLAINTEXT"] == f"{name}:9092", "containers keep theirs"
        ports.add(port)
    assert len(ports) == len(brokers) == 3

"""deploy/kubernetes, checked offline: the base and the example overlay, rendered (by
tests/deploy/kustomize.py), against the Kubernetes OpenAPI schemas shipped in
kubernetes-validate (strict: unknown fields are errors). Strimzi's resources (Kafka,
KafkaNodePool, KafkaTopic, KafkaUser) have no schema there: they are checked below for
what the pipeline needs (topics, replication, ACLs), not against Strimzi's CRDs."""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import ValidationError
from pydantic import ValidationError as SettingsError

from clickstream.settings import Settings
from deploy.kafka_topics import topic_config
from schemas import Topics
from stream_app.web import READY_PATH
from tests.deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/example"]
# The oldest Kubernetes release still maintained when this was written.
KUBERNETES_VERSION = "1.32.0"
STRIMZI = "kafka.strimzi.io/v1beta2"
OTHER_VARIABLES = {"CLICKSTREAM_LOG_LEVEL"}

Resources = list[dict[str, Any]]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> Resources:
    return render(KUBERNETES / request.param)


def one(resources: Resources, kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container(resources: Resources, kind: str, name: str) -> dict[str, Any]:
    [found] = one(resources, kind, name)["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def settings_of(resources: Resources, kind: str, name: str) -> dict[str, str]:
    """The CLICKSTREAM_ variables a workload's container gets (ConfigMap, Secret, env)."""
    values: dict[str, str] = {}
    spec = container(resources, kind, name)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            values.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            values.update(one(resources, "Secret", source["secretRef"]["name"])["stringData"])
    values.update({e["name"]: e.get("value", "") for e in spec.get("env", [])})
    return values


def test_every_resource_follows_the_kubernetes_schemas(rendered: Resources) -> None:
    checked = 0
    for resource in rendered:
        if resource["apiVersion"] == STRIMZI:
            continue
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_the_schema_check_catches_a_broken_resource(rendered: Resources) -> None:
    broken = copy.deepcopy(one(rendered, "Deployment", "clickstream-gateway"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_names_are_unique_and_the_overlay_sets_its_namespace() -> None:
    for kustomization in KUSTOMIZATIONS:
        resources = render(KUBERNETES / kustomization)
        keys = [(r["kind"], r["metadata"]["name"]) for r in resources]
        assert len(keys) == len(set(keys)), kustomization
    overlay = render(KUBERNETES / "overlays/example")
    namespaced = [r for r in overlay if r["kind"] != "Namespace"]
    assert {r["metadata"]["namespace"] for r in namespaced} == {"clickstream-example"}
    assert container(overlay, "Deployment", "clickstream-gateway")["image"].endswith(
        "/clickstream:0.1.0"
    )
    assert one(overlay, "StatefulSet", "clickstream-worker")["spec"]["replicas"] == 3


def test_every_clickstream_variable_is_a_valid_setting(
    rendered: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {f"CLICKSTREAM_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    for kind, name in [
        ("Deployment", "clickstream-gateway"),
        ("StatefulSet", "clickstream-worker"),
    ]:
        env = settings_of(rendered, kind, name)
        clickstream = {k for k in env if k.startswith("CLICKSTREAM_")}
        assert clickstream <= known, clickstream - known
        # Read as the process reads them (JSON values included), Kubernetes' $(VAR) filled.
        with monkeypatch.context() as patched:
            for variable in (v for v in os.environ if v.startswith("CLICKSTREAM_")):
                patched.delenv(variable)
            for variable in clickstream:
                value = env[variable].replace("$(KAFKA_PASSWORD)", "secret")
                patched.setenv(variable, value.replace("$(POD_NAME)", "clickstream-worker-0"))
            # The committed secrets are placeholders: refused at start until replaced.
            with pytest.raises(SettingsError, match="a placeholder, not a secret"):
                Settings()
            for variable in ("CLICKSTREAM_INTERNAL_TOKENS", "CLICKSTREAM_CONTROL_SECRET"):
                patched.setenv(variable, secrets.token_urlsafe(32))
            settings = Settings()
        assert settings.kafka_bootstrap
        assert settings.mongodb_url
        if kind == "Deployment":
            assert settings.kafka_extra["sasl.username"] == "clickstream-gateway"
            assert settings.kafka_extra["sasl.password"] == "secret"
        else:
            assert settings.worker_instance_id == "clickstream-worker-0"


def test_gateway_probes_drain_resources_and_scaling(rendered: Resources) -> None:
    gateway = container(rendered, "Deployment", "clickstream-gateway")
    assert gateway["args"] == ["gateway"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["lifecycle"]["preStop"]
    # One process per pod, everywhere: its drain is the documented one.
    assert "CLICKSTREAM_HTTP_WORKERS" not in settings_of(
        rendered, "Deployment", "clickstream-gateway"
    )
    assert {"requests", "limits"} <= set(gateway["resources"])
    hpa = one(rendered, "HorizontalPodAutoscaler", "clickstream-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "clickstream-gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(rendered, "PodDisruptionBudget", "clickstream-gateway")
    labels = one(rendered, "Deployment", "clickstream-gateway")["spec"]["template"]["metadata"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels["labels"].items()


def test_workers_have_stable_ids_and_a_volume_for_rocksdb(rendered: Resources) -> None:
    statefulset = one(rendered, "StatefulSet", "clickstream-worker")
    worker = container(rendered, "StatefulSet", "clickstream-worker")
    env = {e["name"]: e for e in worker["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CLICKSTREAM_WORKER_ID"]["value"] == "$(POD_NAME)"
    names = [e["name"] for e in worker["env"]]
    assert names.index("POD_NAME") < names.index("CLICKSTREAM_WORKER_ID")  # $(...) order
    headless = one(rendered, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert (
        env["CLICKSTREAM_WORKER_WEB_HOST"]["value"] == f"$(POD_NAME).{headless['metadata']['name']}"
    )
    settings = settings_of(rendered, "StatefulSet", "clickstream-worker")
    assert settings["CLICKSTREAM_WORKER_STORE"] == "rocksdb"
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings["CLICKSTREAM_DATA_DIR"]
    assert worker["readinessProbe"]["httpGet"]["path"] == READY_PATH


def test_strimzi_topics_are_the_pipelines_and_replicated(rendered: Resources) -> None:
    settings = settings_of(rendered, "StatefulSet", "clickstream-worker")
    names = Topics(settings["CLICKSTREAM_TOPIC_PREFIX"])
    partitions = int(settings["CLICKSTREAM_TOPIC_PARTITIONS"])
    expected = names.layout(partitions)
    topics = {r["spec"]["topicName"]: r["spec"] for r in rendered if r["kind"] == "KafkaTopic"}
    assert {name: spec["partitions"] for name, spec in topics.items()} == expected
    for name, spec in topics.items():
        assert spec["replicas"] == 3
        # As the pipeline creates its topics where nothing else does.
        wanted = topic_config(names, name, spec["replicas"])
        assert {key: str(value) for key, value in spec["config"].items()} == wanted
    kafka = one(rendered, "Kafka", "clickstream")["spec"]["kafka"]
    assert kafka["config"]["min.insync.replicas"] == 2
    assert kafka["config"]["default.replication.factor"] == 3
    # The workers' changelogs get as many copies.
    assert settings["CLICKSTREAM_TOPIC_REPLICATION_FACTOR"] == "3"
    [pool] = [r for r in rendered if r["kind"] == "KafkaNodePool"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}


def writers(rendered: Resources, topic: str) -> set[str]:
    """KafkaUsers allowed to write ``topic``."""
    found = set()
    for user in (r for r in rendered if r["kind"] == "KafkaUser"):
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            if resource["type"] != "topic":
                continue
            matches = (
                resource["name"] == topic
                if resource["patternType"] == "literal"
                else (topic.startswith(resource["name"]))
            )
            if matches and "Write" in acl["operations"]:
                found.add(user["metadata"]["name"])
    return found


def test_acls_let_producers_write_only_sessions_and_events(rendered: Resources) -> None:
    names = Topics("clickstream.")
    # Producers write only the ingest topics; workers write their markers there, operators
    # replay dead letters there.
    ingest_writers = {
        "clickstream-gateway",
        "clickstream-producer",
        "clickstream-worker",
        "clickstream-operator",
    }
    assert writers(rendered, names.sessions) == ingest_writers
    assert writers(rendered, names.events) == ingest_writers
    assert writers(rendered, names.releases) == {
        "clickstream-gateway",
        "clickstream-worker",
        "clickstream-operator",
    }
    for topic in (names.batches, names.dead_letter, names.state_changelog):
        assert writers(rendered, topic) == {"clickstream-worker"}
    gateway = container(rendered, "Deployment", "clickstream-gateway")
    [password] = [e for e in gateway["env"] if e["name"] == "KAFKA_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"]["name"] == "clickstream-gateway"


def test_brokers_mongodb_members_workers_and_gateways_spread_over_nodes(
    rendered: Resources,
) -> None:
    # Brokers and MongoDB members hold the copies acks=all and majority writes wait for:
    # never two on one node. Gateways and workers spread where they can.
    pods = {
        ("Deployment", "clickstream-gateway"): "ScheduleAnyway",
        ("StatefulSet", "clickstream-worker"): "ScheduleAnyway",
        ("StatefulSet", "clickstream-mongodb"): "DoNotSchedule",
    }
    for (kind, name), when in pods.items():
        template = one(rendered, kind, name)["spec"]["template"]
        [spread] = template["spec"]["topologySpreadConstraints"]
        assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
            "kubernetes.io/hostname",
            when,
        ), name
        assert (
            spread["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ), name
    pool = one(rendered, "KafkaNodePool", "dual-role")
    [spread] = pool["spec"]["template"]["pod"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "kubernetes.io/hostname",
        "DoNotSchedule",
    )
    assert spread["labelSelector"]["matchLabels"] == {
        "strimzi.io/cluster": pool["metadata"]["labels"]["strimzi.io/cluster"],
        "strimzi.io/pool-name": pool["metadata"]["name"],
    }


def _script_acls() -> set[tuple[str, str, str, str, frozenset[str]]]:
    """What ``deploy/kafka_acls.sh`` grants: (user, resource type, name, pattern, operations)."""
    script = ROOT / "deploy" / "kafka_acls.sh"
    bash = shutil.which("bash") or "/bin/bash"
    printed = subprocess.run(  # noqa: S603 - our script, fixed arguments
        [bash, str(script), "broker:9093", "admin.properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = set()
    for line in printed.splitlines():
        words = line.split()
        user = words[words.index("--allow-principal") + 1].removeprefix("User:")
        operations = frozenset(w for i, w in enumerate(words) if words[i - 1] == "--operation")
        pattern = "prefix" if "--resource-pattern-type" in words else "literal"
        kind, name = next(
            (kind, words[words.index(option) + 1] if option != "--cluster" else "")
            for option, kind in (
                ("--topic", "topic"),
                ("--group", "group"),
                ("--transactional-id", "transactionalId"),
                ("--cluster", "cluster"),
            )
            if option in words
        )
        found.add((user, kind, name, "literal" if kind == "cluster" else pattern, operations))
    return found


def test_the_acl_script_and_the_kafka_users_grant_the_same(rendered: Resources) -> None:
    users = {
        (
            user["metadata"]["name"],
            acl["resource"]["type"],
            acl["resource"].get("name", ""),
            acl["resource"].get("patternType", "literal"),
            frozenset(acl["operations"]),
        )
        for user in rendered
        if user["kind"] == "KafkaUser"
        for acl in user["spec"]["authorization"]["acls"]
    }
    assert users == _script_acls()
    worker = {acl for acl in users if acl[0] == "clickstream-worker"}
    assert all(not {"Delete", "Alter", "All"} & acl[4] for acl in worker), "least privilege"
    names = Topics("clickstream.")
    assert {acl[2] for acl in worker if acl[1] == "topic"} == {
        names.sessions,
        names.events,
        names.releases,
        names.batches,
        names.dead_letter,
        names.state_changelog,
    }
    assert ("clickstream-worker", "group", names.stream_app_id) in {acl[:3] for acl in worker}

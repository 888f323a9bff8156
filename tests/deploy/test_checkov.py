"""checkov's skips (scripts/checkov.sh, make checkov) are the ones docs/deploy.md lists with
their reasons: those of deploy/checkov.yaml, and those written next to one resource in a
file of deploy/ (a ``checkov:skip=`` comment or a ``checkov.io/skip`` annotation)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "checkov.yaml"
DOCS = ROOT / "docs" / "deploy.md"
_COMMENT = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")
_ANNOTATION = re.compile(r"checkov\.io/skip\d+:\s*([A-Z0-9_]+)(?:=(.*))?")
_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \|([^|]*)\|([^|]*)\|([^|]*)\|$")


def configured() -> set[str]:
    return set(yaml.safe_load(CONFIG.read_text())["skip-check"])


def in_files() -> dict[str, list[str]]:
    """Every check skipped in a file of deploy/, with the reasons given there."""
    found: dict[str, list[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path == CONFIG:
            continue
        for line in path.read_text(errors="replace").splitlines():
            for pattern in (_COMMENT, _ANNOTATION):
                for check, reason in pattern.findall(line):
                    found.setdefault(check, []).append(reason.strip())
    return found


def documented() -> dict[str, list[str]]:
    section = DOCS.read_text().split("\n## Checkov\n", 1)[1].split("\n## ", 1)[0]
    rows = [_ROW.match(line) for line in section.splitlines()]
    return {row[1]: [cell.strip() for cell in row.groups()[1:]] for row in rows if row}


def test_every_skip_is_in_the_table_and_every_row_is_a_skip() -> None:
    assert set(documented()) == configured() | set(in_files())
    assert not configured() & set(in_files()), "skipped everywhere and for one resource too"


def test_every_skip_has_its_reason() -> None:
    for check, cells in documented().items():
        assert all(cells), f"{check}: an empty cell in docs/deploy.md"
    for check, reasons in in_files().items():
        assert all(reasons), f"{check}: skipped in a file of deploy/ without a reason"


def test_checkov_is_pinned_to_one_release() -> None:
    script = (ROOT / "scripts" / "checkov.sh").read_text()
    assert re.search(r"^CHECKOV_VERSION=\d+\.\d+\.\d+$", script, re.MULTILINE)

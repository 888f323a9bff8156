"""The README says what is true: its settings table is the settings class's, and every link
in it and in ``docs/`` leads somewhere that exists."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from deploy.settings_doc import README, written

if TYPE_CHECKING:
    from pathlib import Path

ROOT = README.parent
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


def test_the_settings_table_is_made_from_the_settings_class() -> None:
    text = README.read_text()

    assert written(text) == text, "run python -m deploy.settings_doc"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_heading_that_exist(document: Path) -> None:
    broken = []
    for target in _LINK.findall(document.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")

    assert not broken, f"{document.name}: {broken}"

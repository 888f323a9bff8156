"""The README's table of settings, made from the settings class: ``python -m
deploy.settings_doc`` writes it between its markers; a test checks it is up to date."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from clickstream.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value == [] or value == {}:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`" + ",".join(str(item) for item in value) + "`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"`{value}` ({value:,})"
    return f"`{json.dumps(value) if isinstance(value, dict) else value}`"


def table() -> str:
    """Every setting: its variable, default and meaning (the field's docstring)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `CLICKSTREAM_{name.upper()}` | {_default(field)} | {meaning} |")
    return "\n".join(rows)


def written(text: str) -> str:
    """``text`` (the README) with the table between its markers made anew."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> None:
    README.write_text(written(README.read_text()))
    sys.stdout.write(f"settings table written to {README}\n")


if __name__ == "__main__":
    main()

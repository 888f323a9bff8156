"""The local run's secrets: an internal token and a control secret kept in the data dir,
made on first use, so ``make run`` needs no configuration. Values from the environment
always win over these files."""

from __future__ import annotations

import os
import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from clickstream.settings import Settings

INTERNAL_TOKEN_FILE = "internal-token"  # noqa: S105 - a file name
CONTROL_SECRET_FILE = "control-secret"  # noqa: S105 - a file name
_PASSWORD = re.compile(r"//([^:/@]*):[^@/]*@")


def local_secret(path: Path) -> tuple[str, bool]:
    """The secret kept at ``path``, made (readable by its owner only) if missing; and
    whether it was made now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return value, True


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def internal_token(settings: Settings) -> str | None:
    """The bearer token a client of the internal endpoints sends: the first of
    ``CLICKSTREAM_INTERNAL_TOKENS``, else the local run's token file, else None."""
    if settings.internal_tokens:
        return settings.internal_tokens[0].get_secret_value()
    return _read(settings.data_dir / INTERNAL_TOKEN_FILE)


def internal_auth_headers(settings: Settings) -> dict[str, str]:
    """The ``Authorization`` header for the internal endpoints, if a token is known."""
    token = internal_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def control_secrets(settings: Settings) -> list[bytes]:
    """The secrets that sign control messages: ``CLICKSTREAM_CONTROL_SECRET``, else the
    local run's file (so a second ``clickstream worker`` beside ``make run`` finds it)."""
    if settings.control_secret:
        return settings.control_secrets
    local = _read(settings.data_dir / CONTROL_SECRET_FILE)
    return [local.encode()] if local else []


def redacted(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***``: for logs and run.json."""
    return _PASSWORD.sub(r"//\1:***@", uri)

"""The image's HEALTHCHECK: is the process serving? (standard library only, fast to start).

One image runs several commands, so the check follows the command of the container's
main process: the gateway must answer 200 on ``/health``; a worker must answer on its web
port at all (``/ready/`` is 503 while it recovers its tables: alive, not ready); one-shot
commands (``topics``, ``batch``) are healthy while they run. An argument names another
pid than 1 (the tests check processes of their own).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 4.0


def command(pid: str) -> list[str]:
    """The arguments of the process checked: the container's main process, pid 1."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - our own http URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def main(pid: str = "1") -> int:
    try:
        args = command(pid)
        if "gateway" in args:
            port = os.environ.get("CLICKSTREAM_HTTP_PORT", "5000")
            return 0 if status(f"http://127.0.0.1:{port}/health") == 200 else 1
        if "worker" in args:
            host = os.environ.get("CLICKSTREAM_WORKER_WEB_HOST", "127.0.0.1")
            port = os.environ.get("CLICKSTREAM_WORKER_WEB_PORT", "6066")
            return 0 if status(f"http://{host}:{port}/ready/") in (200, 503) else 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"unhealthy: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))

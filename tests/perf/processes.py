"""The processes a bench cell runs, and the CPU each of them uses, read from ``/proc``."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

_ROLES = (
    ("noida", "broker"),
    ("mongod", "mongod"),
    ("deploy.cli worker", "worker"),
    ("deploy.cli gateway", "gateway"),
    ("multiprocessing", "gateway"),
)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU of one process (0 once it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            children[int(fields[1])].append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def run_roles(root: int) -> dict[int, str]:
    """The processes of a ``clickstream run`` (its own process serves the gateway), by pid."""
    roles = {}
    for pid in descendants(root):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = next((role for needle, role in _ROLES if needle in line), "other")
        roles[pid] = "gateway" if pid == root else name
    return roles


class CpuShares:
    """While open, the CPU each role's processes use, in cores (``cores`` once closed)."""

    def __init__(self, roles: dict[int, str]) -> None:
        self.roles = roles
        self.cores: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # CPU seconds of each role while open

    def __enter__(self) -> CpuShares:
        self._before = {pid: cpu_seconds(pid) for pid in self.roles}
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._started
        used: dict[str, float] = collections.defaultdict(float)
        for pid, name in self.roles.items():
            used[name] += cpu_seconds(pid) - self._before[pid]
        self.seconds = {name: round(value, 3) for name, value in sorted(used.items())}
        self.cores = {name: round(value / elapsed, 3) for name, value in sorted(used.items())}

"""Logging set-up for the entry points: one line per record, context as key=value."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Log to stderr at ``level`` (default ``CLICKSTREAM_LOG_LEVEL`` or INFO)."""
    logging.basicConfig(
        level=(level or os.environ.get("CLICKSTREAM_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One INFO line per HTTP call (readiness probes, session reads) drowns what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)

"""The ``clickstream`` command for operators. Settings come from ``CLICKSTREAM_*``."""

from __future__ import annotations

import sys

import typer

from clickstream.exceptions import ClickstreamError
from clickstream.log import configure_logging
from clickstream.settings import get_settings

app = typer.Typer(
    help="Clickstream ingestion: HTTP -> Kafka -> stream tables -> MongoDB batches.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@app.command()
def run() -> None:
    """Run everything on this machine: local servers (unless CLICKSTREAM_KAFKA_BOOTSTRAP and
    CLICKSTREAM_MONGODB_URI name external ones), topics, and the API in the foreground."""
    from deploy.local_run import run_locally  # noqa: PLC0415 - keeps other commands light

    configure_logging()
    try:
        run_locally(get_settings())
    except ClickstreamError as exc:
        _fail(exc)


@app.command()
def gateway() -> None:
    """Serve the API against the configured Kafka (CLICKSTREAM_KAFKA_BOOTSTRAP)."""
    from producers.gateway.server import serve  # noqa: PLC0415

    configure_logging()
    serve(get_settings())


@app.command()
def topics() -> None:
    """Create the pipeline's topics on the configured Kafka, if missing."""
    from deploy.kafka_topics import ensure_topics  # noqa: PLC0415

    configure_logging()
    try:
        created = ensure_topics(get_settings())
    except ClickstreamError as exc:
        _fail(exc)
    typer.echo(f"created: {', '.join(created) or 'nothing, all exist'}")


if __name__ == "__main__":
    sys.exit(app())

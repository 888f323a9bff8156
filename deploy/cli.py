"""The ``clickstream`` command for operators. Settings come from ``CLICKSTREAM_*``."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from datetime import UTC, datetime  # noqa: TC003 - typer reads the annotations
from enum import StrEnum
from pathlib import Path  # noqa: TC003 - typer reads the annotations
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from pydantic import SecretStr
from typer.core import TyperGroup

from clickstream.credentials import internal_auth_headers
from clickstream.exceptions import ClickstreamError
from clickstream.log import configure_logging
from clickstream.settings import Settings, get_settings
from consumers.training import RowShape

if TYPE_CHECKING:
    from collections.abc import Iterator

app = typer.Typer(
    help="Clickstream ingestion: HTTP -> Kafka -> stream tables -> MongoDB batches.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _with_local_run(settings: Settings) -> Settings:
    """``settings``, with the servers of a ``clickstream run`` going in its data dir where
    they name none (what ``run.json`` there says; a password it hides is not guessed)."""
    from deploy.local.run import run_file  # noqa: PLC0415 - keeps other commands light

    try:
        running = json.loads(run_file(settings).read_text())
    except (OSError, ValueError):
        return settings
    found: dict[str, str | SecretStr] = {}
    if not settings.kafka_bootstrap and running.get("kafka_bootstrap"):
        found["kafka_bootstrap"] = running["kafka_bootstrap"]
    uri = running.get("mongodb_uri") or ""
    if not settings.mongodb_url and uri and "***" not in uri:
        found["mongodb_uri"] = SecretStr(uri)
    return settings.model_copy(update=found) if found else settings


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@app.command()
def run() -> None:
    """Run everything on this machine: local servers (unless CLICKSTREAM_KAFKA_BOOTSTRAP and
    CLICKSTREAM_MONGODB_URI name external ones), topics, and the API in the foreground."""
    from deploy.local.run import run_locally  # noqa: PLC0415 - keeps other commands light

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
def worker() -> None:
    """Run a stream worker. Workers share the partitions through their consumer group:
    start more (each with its own CLICKSTREAM_WORKER_WEB_PORT) to spread the load."""
    from stream_app.worker import run_worker  # noqa: PLC0415

    configure_logging()
    try:
        run_worker(get_settings())
    except (ClickstreamError, ValueError) as exc:
        _fail(exc)


GatewayUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="CLICKSTREAM_GATEWAY_URL",
        help="The gateway; default http://CLICKSTREAM_HTTP_HOST:CLICKSTREAM_HTTP_PORT",
    ),
]


def _gateway_url(url: str | None) -> str:
    settings = get_settings()
    return (url or f"http://{settings.http_host}:{settings.http_port}").rstrip("/")


def _show(response: httpx.Response) -> None:
    """Print the answer; exit 1 unless it is a 2xx."""
    typer.echo(json.dumps(response.json(), indent=2))
    if not response.is_success:
        raise typer.Exit(1)


def _release_via_kafka(release_id: str, min_idle_seconds: int) -> None:
    from consumers.batch_reader import BatchReader  # noqa: PLC0415 - keeps other commands light
    from producers.library import ClickstreamProducer  # noqa: PLC0415

    settings = _with_local_run(get_settings())
    try:
        with ClickstreamProducer(settings) as producer:
            request_id = producer.request_release(release_id, min_idle_seconds)
        with BatchReader(settings) as reader:
            answer = reader.wait_for_release(
                release_id, request_id=request_id, timeout=settings.release_wait_seconds
            )
    except (ClickstreamError, ValueError, TimeoutError) as exc:
        _fail(exc)
    typer.echo(json.dumps(answer.public(), indent=2))
    if not answer.released:
        raise typer.Exit(1)


@app.command()
def release(
    release_id: Annotated[str, typer.Argument(help="The idempotency key of the release")],
    min_idle_seconds: Annotated[
        int, typer.Option(help="Leave sessions active this recently for the next release")
    ] = 0,
    url: GatewayUrl = None,
    via: Annotated[
        str,
        typer.Option(
            help="http: ask the gateway. kafka: produce a ReleaseRequested to the releases "
            "topic and wait for its answer on the batch topic (CLICKSTREAM_KAFKA_BOOTSTRAP)"
        ),
    ] = "http",
) -> None:
    """Release everything gathered so far as a batch, and print it (exit 1 when there was
    nothing to release)."""
    if via == "kafka":
        _release_via_kafka(release_id, min_idle_seconds)
        return
    if via != "http":
        _fail(ValueError(f"--via is http or kafka, not {via!r}"))
    response = httpx.post(
        f"{_gateway_url(url)}/api/v1/clickstream/internal/batch/release",
        json={"release_id": release_id, "min_idle_seconds": min_idle_seconds},
        headers=internal_auth_headers(get_settings()),
        timeout=get_settings().release_wait_seconds + 30,
    )
    _show(response)


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="The user, as the sessions gave it")],
    url: GatewayUrl = None,
) -> None:
    """Erase every session of a user from the tables, the released batches and the
    releases to come, and print the receipt (status forgetting if it takes longer than
    CLICKSTREAM_RELEASE_WAIT_SECONDS: see forget-status)."""
    response = httpx.post(
        f"{_gateway_url(url)}/api/v1/clickstream/internal/users/forget",
        json={"user_id": user_id},
        headers=internal_auth_headers(get_settings()),
        timeout=get_settings().release_wait_seconds + 30,
    )
    _show(response)


@app.command("forget-status")
def forget_status(
    request_id: Annotated[str, typer.Argument(help="The request_id a forget answered")],
    url: GatewayUrl = None,
) -> None:
    """Print a forget request's receipt."""
    response = httpx.get(
        f"{_gateway_url(url)}/api/v1/clickstream/internal/users/forget",
        params={"request_id": request_id},
        headers=internal_auth_headers(get_settings()),
        timeout=30,
    )
    _show(response)


class _ShowByDefault(TyperGroup):
    """``clickstream batch BATCH_ID`` is ``clickstream batch show BATCH_ID``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Any: click or typer's
        if args and args[0] not in self.commands and args[0] != "--help":
            args = ["show", *args]
        return super().parse_args(ctx, args)


batch_app = typer.Typer(
    cls=_ShowByDefault, no_args_is_help=True, help="Show a batch, or export its sessions."
)
app.add_typer(batch_app, name="batch")


@batch_app.command("show")
def batch(
    batch_id: Annotated[str, typer.Argument(help="The batch_id a release answered")],
    url: GatewayUrl = None,
) -> None:
    """Print a batch's status and counts (also: clickstream batch BATCH_ID)."""
    response = httpx.get(
        f"{_gateway_url(url)}/api/v1/clickstream/internal/batch",
        params={"batch_id": batch_id},
        headers=internal_auth_headers(get_settings()),
        timeout=30,
    )
    _show(response)


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"


# How training rows are chosen, for export and follow alike.
OnlyNewClicks = Annotated[
    bool,
    typer.Option(
        help="Training rows: leave out repeat sessions without a new click, and positives "
        "whose clicks are all old"
    ),
]
SkipIrrelevant = Annotated[
    bool, typer.Option(help="Training rows: leave out sessions irrelevant or without a click")
]
Negatives = Annotated[
    int, typer.Option(min=1, help="Triplets: at most this many negatives per positive")
]


@batch_app.command("export")
def export(
    batch_id: Annotated[str, typer.Argument(help="A released batch")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write (replaced), or - for stdout")
    ],
    export_format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.JSONL,
    rows: Annotated[
        RowShape,
        typer.Option(
            help="sessions as stored, or training examples: labelled (session, result) rows, "
            "(query, positive) pairs, (query, positive, negative) triplets"
        ),
    ] = RowShape.SESSIONS,
    only_new_clicks: OnlyNewClicks = False,
    skip_irrelevant: SkipIrrelevant = False,
    negatives: Negatives = 1,
) -> None:
    """Write a released batch from MongoDB (CLICKSTREAM_MONGODB_URI) in bounded memory: its
    sessions with their events, one row per session, or training examples (--rows). Parquet
    needs the parquet extra."""
    from batches.store import BatchStore  # noqa: PLC0415
    from consumers.batch_export import export_batch  # noqa: PLC0415
    from consumers.training import TrainingOptions  # noqa: PLC0415

    configure_logging()
    settings = _with_local_run(get_settings())
    try:
        store = BatchStore.from_settings(settings)
    except ValueError as exc:
        _fail(exc)
    options = TrainingOptions(only_new_clicks, skip_irrelevant, negatives)
    try:
        summary = export_batch(
            store, batch_id, output, export_format.value, shape=rows, options=options
        )
    except ClickstreamError as exc:
        _fail(exc)
    finally:
        store.close()
    if output != "-":
        typer.echo(
            f"exported: {summary.sessions} sessions, {summary.events} events, "
            f"{summary.rows} rows ({rows.value}) to {output}; "
            + (
                f"content digest {summary.content_digest} (checked)"
                if summary.content_digest
                else "no content digest (released before digests)"
            )
        )


@batch_app.command("follow")
def follow(
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-d", help="Where each batch's directory goes")
    ],
    export_format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.PARQUET,
    rows: Annotated[
        list[RowShape] | None,
        typer.Option(help="A file per row shape (repeat the option); default: sessions"),
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group: where a restart resumes")] = (
        "batch-follower"
    ),
    only_new_clicks: OnlyNewClicks = False,
    skip_irrelevant: SkipIrrelevant = False,
    negatives: Negatives = 1,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a batch")
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            help="Hold the batches this group has not exported yet: none expires before "
            "(CLICKSTREAM_BATCH_RETENTION_DAYS); let go with batch unhold GROUP"
        ),
    ] = True,
) -> None:
    """Follow the batch topic and export each released batch once into its own directory
    (its files and a manifest.json with counts and SHA-256s, written last). Stops cleanly
    on SIGTERM or SIGINT, after the batch in hand."""
    from consumers.batch_follower import BatchFollower  # noqa: PLC0415
    from consumers.training import TrainingOptions  # noqa: PLC0415

    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    follower = BatchFollower(
        _with_local_run(get_settings()),
        output_dir,
        tuple(rows or [RowShape.SESSIONS]),
        export_format.value,
        TrainingOptions(only_new_clicks, skip_irrelevant, negatives),
        group_id=group,
        keep=keep,
    )
    try:
        for manifest in follower.follow(stop=stop, idle_timeout=idle_timeout):
            typer.echo(f"batch {manifest.batch_id}: {output_dir / manifest.batch_id}")
    except ClickstreamError as exc:
        _fail(exc)


@contextlib.contextmanager
def _batch_expiry() -> Iterator[Any]:
    """The batch expiry on the MongoDB of the settings (or of ``make run``)."""
    from batches.expiry import BatchExpiry  # noqa: PLC0415
    from batches.store import BatchStore  # noqa: PLC0415

    try:
        store = BatchStore.from_settings(_with_local_run(get_settings()))
    except ValueError as exc:
        _fail(exc)
    try:
        yield BatchExpiry(store)
    except ClickstreamError as exc:
        _fail(exc)
    finally:
        store.close()


@batch_app.command("delete")
def delete(
    batch_id: Annotated[str, typer.Argument(help="A released batch")],
    force: Annotated[
        bool, typer.Option(help="Even if a follower keeping its batches has not exported it")
    ] = False,
) -> None:
    """Expire a released batch now: its sessions leave MongoDB; its document stays, status
    expired."""
    from batches.store import parse_batch_id  # noqa: PLC0415

    object_id = parse_batch_id(batch_id)
    if object_id is None:
        _fail(ValueError(f"not a batch id: {batch_id!r}"))
    with _batch_expiry() as expiry:
        expiry.delete(object_id, force=force)
    typer.echo(f"batch {batch_id} expired")


@batch_app.command("holds")
def holds() -> None:
    """The follower groups that keep their batches, and up to which release (UTC ms) each
    exported."""
    with _batch_expiry() as expiry:
        typer.echo(json.dumps(expiry.list_holds(), indent=2))


@batch_app.command("unhold")
def unhold(group: Annotated[str, typer.Argument(help="A follower group")]) -> None:
    """Stop keeping batches for a follower group that will not come back."""
    with _batch_expiry() as expiry:
        if not expiry.unhold(group):
            _fail(ValueError(f"no hold for {group!r}"))
    typer.echo(f"{group} no longer holds batches")


# The command's name as the issue tracker and older notes spell it.
app.add_typer(batch_app, name="batches", hidden=True)


dead_letters_app = typer.Typer(
    no_args_is_help=True,
    help="Read the dead-letter topic and send its messages again (CLICKSTREAM_KAFKA_*).",
)
app.add_typer(dead_letters_app, name="dead-letters")

ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", help="Only letters of this reason, e.g. orphan_event_expired"),
]
SinceOption = Annotated[
    datetime | None,
    typer.Option("--since", help="Only letters written at or after this time (UTC if no zone)"),
]


def _since_ms(since: datetime | None) -> int | None:
    if since is None:
        return None
    aware = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def _dead_letters() -> Any:
    from consumers.dead_letters import DeadLetters  # noqa: PLC0415 - keeps other commands light

    configure_logging()
    return DeadLetters(_with_local_run(get_settings()))


@dead_letters_app.command("list")
def dead_letters_list(reason: ReasonOption = None, since: SinceOption = None) -> None:
    """Print each letter, a JSON object per line: id, reason, detail, session, source."""
    try:
        for letter in _dead_letters().letters(reason, _since_ms(since)):
            typer.echo(json.dumps(letter.public(), ensure_ascii=False))
    except ClickstreamError as exc:
        _fail(exc)


@dead_letters_app.command("show")
def dead_letters_show(
    letter_id: Annotated[str, typer.Argument(help="partition:offset, as list prints it")],
) -> None:
    """Print one letter with its original message decoded."""
    from schemas import AvroCodec  # noqa: PLC0415

    try:
        letter = _dead_letters().get(letter_id)
    except ClickstreamError as exc:
        _fail(exc)
    if letter is None:
        _fail(LookupError(f"no letter {letter_id}"))
    typer.echo(json.dumps(letter.public(AvroCodec()), indent=2, ensure_ascii=False))


@dead_letters_app.command("replay")
def dead_letters_replay(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(help="Letters to replay; default: every one chosen")
    ] = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would be sent, send nothing")] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to watch for letters refused again")
    ] = 10.0,
) -> None:
    """Publish the chosen letters' messages again to where they came from (clicks are
    de-duplicated by event_id: a replay never doubles one); print what was sent, skipped
    and refused again."""
    letters = _dead_letters()
    try:
        chosen = [
            letter
            for letter in letters.letters(reason, _since_ms(since))
            if not letter_ids or letter.id in letter_ids
        ]
        report = letters.replay(chosen, dry_run=dry_run, wait_seconds=wait)
    except ClickstreamError as exc:
        _fail(exc)
    typer.echo(json.dumps(report.public(), indent=2, ensure_ascii=False))


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

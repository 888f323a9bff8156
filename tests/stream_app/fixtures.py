"""Stream workers (processes of their own) and the pipeline around them."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.utils.pipeline import Pipeline, Worker, gateway_client

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from clickstream.settings import Settings


_LOG_TAIL_LINES = 40


@pytest.fixture
def stream_settings(settings_factory: Callable[..., Settings]) -> Settings:
    """Ticks every half second, so waiting events expire without idling."""
    return settings_factory(tick_interval_seconds=0.5)


@pytest.fixture
def worker_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Worker]]:
    """Builds workers (not started), each new unless restarting a stopped or killed one
    (same id, port and data dir, so its local state too, unless ``new_disk``); every one is
    stopped at the end of the test."""
    workers: list[Worker] = []

    def build(
        settings: Settings, restarting: Worker | None = None, *, new_disk: bool = False
    ) -> Worker:
        if restarting is None:
            worker_id, port = f"worker-{len(workers)}-{uuid.uuid4().hex[:6]}", None
        else:
            worker_id, port = restarting.worker_id, restarting.port
        data_dir = (
            restarting.data_dir
            if restarting is not None and not new_disk
            else tmp_path_factory.mktemp("worker")
        )
        worker = Worker(settings, data_dir, worker_id, port)
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        worker.stop()
        # pytest shows a test's teardown output only when it failed: the workers' own story.
        tail = "\n".join(worker.log().splitlines()[-_LOG_TAIL_LINES:])
        sys.stdout.write(f"--- {worker.worker_id} ({worker.log_file}), last lines:\n{tail}\n")


@pytest.fixture
def pipeline(
    stream_settings: Settings, worker_factory: Callable[..., Worker]
) -> Iterator[Pipeline]:
    """One worker and the gateway."""
    worker = worker_factory(stream_settings).start()
    with gateway_client(stream_settings, [worker]) as gateway:
        yield Pipeline(stream_settings, gateway, [worker])

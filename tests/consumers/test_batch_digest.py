"""A batch's content digest: computed as the batch is written, carried by its announcement,
shown on its page, checked by every reader and export; a changed byte is detected."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from batches.exceptions import BatchContentMismatchError
from batches.store import BatchStore
from consumers.batch_reader import BatchReader
from tests.consumers.test_batch_export import clickstream
from tests.utils.payloads import event_body, new_id, session_body

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.utils.pipeline import Pipeline

# Five clicks of 900 KB: the session's events take a second document (chunks of 4 MB).
_LARGE_META = "x" * 900_000


@pytest.fixture
def store(pipeline: Pipeline) -> Iterator[BatchStore]:
    batches = BatchStore.from_settings(pipeline.settings)
    yield batches
    batches.close()


def released(pipeline: Pipeline) -> str:
    """A batch with a session without clicks, one with a few and one large enough to be
    stored in chunks."""
    sessions = [session_body() for _ in range(3)]
    for count, session in enumerate(sessions):
        pipeline.register(session)
        for _ in range(count):
            pipeline.add_events(session["session_id"], [event_body()])
    large = sessions[2]["session_id"]
    for _ in range(5):
        pipeline.add_events(large, [event_body(item_info={"blob": _LARGE_META})])
    answer = pipeline.release(new_id())
    assert answer.status_code == 200, answer.text
    return str(answer.json()["batch_id"])


def digest_as_documented(store: BatchStore, batch_id: str) -> str:
    """The digest computed from MongoDB by hand, as ``batches.digest`` describes it."""
    raw = CodecOptions(document_class=RawBSONDocument)
    sessions = store.sessions.with_options(codec_options=raw)
    chunks = store.event_chunks.with_options(codec_options=raw)
    batch = store.batches.find_one({"_id": ObjectId(batch_id)})
    assert batch is not None
    lines = []
    for partition in range(batch["partition_count"]):
        part = hashlib.sha256()
        found = {"batch_id": ObjectId(batch_id), "partition": partition}
        for doc in sessions.find(found).sort("session_number"):
            part.update(doc.raw)
            its_chunks = {"batch_id": ObjectId(batch_id), "session_number": doc["session_number"]}
            for chunk in chunks.find(its_chunks).sort("chunk"):
                part.update(chunk.raw)
        lines.append(f"{partition}:{part.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_a_batch_carries_its_digest_and_exports_to_the_same_bytes_twice(
    pipeline: Pipeline, store: BatchStore, tmp_path: Path
) -> None:
    batch_id = released(pipeline)
    assert store.event_chunks.count_documents({"batch_id": ObjectId(batch_id)}) > 0

    digest = pipeline.batch(batch_id).json()["content_digest"]
    with BatchReader(pipeline.settings, group_id=f"digest-{new_id()}") as reader:
        announced = next(reader.follow(idle_timeout=30))
        read = list(reader.sessions(batch_id))
    assert announced.batch_id == batch_id
    assert announced.content_digest == digest == digest_as_documented(store, batch_id)
    assert len(read) == 3

    for export_format in ("jsonl", "parquet"):
        paths = [tmp_path / f"{n}.{export_format}" for n in (1, 2)]
        for path in paths:
            done = clickstream(
                pipeline.settings,
                "batch",
                "export",
                batch_id,
                "--format",
                export_format,
                "-o",
                str(path),
            )
            assert done.returncode == 0, done.stderr
            assert f"content digest {digest} (checked)" in done.stdout
        assert paths[0].read_bytes() == paths[1].read_bytes(), export_format


@pytest.mark.parametrize("collection", ["batch_sessions", "batch_session_events"])
def test_a_changed_byte_fails_every_reader_and_leaves_no_file(
    pipeline: Pipeline, store: BatchStore, tmp_path: Path, collection: str
) -> None:
    batch_id = released(pipeline)
    if collection == "batch_sessions":
        doc = store.sessions.find_one({"batch_id": ObjectId(batch_id)})
        assert doc is not None
        query = doc["search_query"]
        changed = query[:-1] + chr(ord(query[-1]) ^ 1)  # one bit of one byte
        store.sessions.update_one({"_id": doc["_id"]}, {"$set": {"search_query": changed}})
        partition: int | None = doc["partition"]
    else:
        chunk = store.event_chunks.find_one({"batch_id": ObjectId(batch_id)})
        assert chunk is not None
        changed = chunk["events"][0]["meta"].replace("x", "y", 1)
        store.event_chunks.update_one({"_id": chunk["_id"]}, {"$set": {"events.0.meta": changed}})
        partition = None

    output = tmp_path / "batch.jsonl"
    export = clickstream(pipeline.settings, "batch", "export", batch_id, "-o", str(output))
    with BatchReader(pipeline.settings) as reader, pytest.raises(BatchContentMismatchError):
        list(reader.sessions(batch_id))

    assert export.returncode == 1
    assert f"batch {batch_id} is not as it was written" in export.stderr
    if partition is not None:
        assert f"partition(s) {partition} differ" in export.stderr
    assert list(tmp_path.iterdir()) == [], "no file, not even a partial one"


def test_a_session_removed_from_a_batch_is_detected(pipeline: Pipeline, store: BatchStore) -> None:
    batch_id = released(pipeline)
    store.sessions.delete_one({"batch_id": ObjectId(batch_id), "events": []})

    with pytest.raises(BatchContentMismatchError):
        list(store.iter_sessions(ObjectId(batch_id)))
    assert len(list(store.iter_sessions(ObjectId(batch_id), verify=False))) == 2

"""`clickstream batch export --rows training|pairs|triplets`: a batch with clicked, unclicked,
irrelevant and repeat sessions becomes labelled rows a fine-tuning job trains on, the same
bytes on every export."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from tests.consumers.test_batch_export import clickstream
from tests.utils.payloads import event_body, new_id, session_body
from tests.utils.pipeline import IRRELEVANT_URL, eventually

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.utils.pipeline import Pipeline


def shown(*object_ids: str) -> list[dict[str, Any]]:
    return [
        {"object_id": o, "rank": float(n), "item_info": {"n": n}} for n, o in enumerate(object_ids)
    ]


# Clicks at known times, within the age the gateway accepts.
T0 = int(time.time()) - 3600


def click(object_id: str, after_t0: int) -> dict[str, Any]:
    return event_body(object_id=object_id, created_at=T0 + after_t0)


def named(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each session named as `two_batches` names it (its id less the run's suffix)."""
    return [{**row, "session_id": row["session_id"].rsplit("-", 1)[0]} for row in rows]


def two_batches(pipeline: Pipeline) -> tuple[str, str]:
    """The first batch: `clicked` (b and d clicked, and an object it never showed), `unclicked`,
    `irrelevant` (h clicked, then marked irrelevant), `last` (m, its last result, clicked).
    The second: `clicked` again with a new click on e, and nothing new for the others."""
    run = new_id()
    results = {"clicked": "abcde", "unclicked": "fg", "irrelevant": "hij", "last": "klm"}
    ids = {name: f"s-{name}-{run}" for name in results}
    for name, objects in results.items():
        pipeline.register(session_body(session_id=ids[name], search_results=shown(*objects)))
    pipeline.add_events(ids["clicked"], [click("b", 100), click("d", 101), click("zz", 102)])
    pipeline.add_events(ids["clicked"], [click("b", 99)])
    pipeline.add_events(ids["irrelevant"], [click("h", 100)])
    pipeline.add_events(ids["last"], [click("m", 100)])
    marked = pipeline.gateway.post(IRRELEVANT_URL, json={"session_id": ids["irrelevant"]})
    assert marked.status_code == 200, marked.text
    eventually(lambda: pipeline.session(ids["irrelevant"]).json().get("is_irrelevant"))
    pipeline.wait_session(ids["last"], events=1)
    pipeline.wait_session(ids["clicked"], events=4)
    first = pipeline.release(new_id())
    assert first.status_code == 200, first.text

    pipeline.add_events(ids["clicked"], [click("e", 200)])
    pipeline.wait_session(ids["clicked"], events=5)
    second = pipeline.release(new_id())
    assert second.status_code == 200, second.text
    return first.json()["batch_id"], second.json()["batch_id"]


def export(pipeline: Pipeline, batch_id: str, path: Path, *options: str) -> list[dict[str, Any]]:
    done = clickstream(pipeline.settings, "batch", "export", batch_id, "-o", str(path), *options)
    assert done.returncode == 0, done.stderr
    if path.suffix == ".parquet":
        return named(pq.read_table(path).to_pylist())
    return named([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])


def labels(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, int, int]]]:
    """Per session: (object, label, clicks, new clicks), in the order shown."""
    out: dict[str, list[tuple[str, str, int, int]]] = {}
    for row in rows:
        entry = (row["object_id"], row["label"], row["clicks"], row["new_clicks"])
        out.setdefault(row["session_id"], []).append(entry)
    return out


def test_training_rows_are_labelled_by_the_cascade_rule(pipeline: Pipeline, tmp_path: Path) -> None:
    first, second = two_batches(pipeline)

    rows = export(pipeline, first, tmp_path / "first.jsonl", "--rows", "training")

    assert labels(rows) == {
        "s-clicked": [
            ("a", "negative", 0, 0),
            ("b", "positive", 2, 2),
            ("c", "negative", 0, 0),
            ("d", "positive", 1, 1),
            ("e", "unjudged", 0, 0),
        ],
        "s-unclicked": [("f", "unjudged", 0, 0), ("g", "unjudged", 0, 0)],
        "s-irrelevant": [
            ("h", "positive", 1, 1),
            ("i", "unjudged", 0, 0),
            ("j", "unjudged", 0, 0),
        ],
        "s-last": [("k", "negative", 0, 0), ("l", "negative", 0, 0), ("m", "positive", 1, 1)],
    }
    by_session = {row["session_id"]: row for row in rows}
    assert {s: r["is_irrelevant"] for s, r in by_session.items()} == {
        "s-clicked": False,
        "s-unclicked": True,  # no click: irrelevant, as the original counts it
        "s-irrelevant": True,
        "s-last": False,
    }
    [b] = [row for row in rows if row["object_id"] == "b"]
    assert (b["position"], b["rank"], b["first_click_at"], b["object_meta"]) == (
        1,
        1.0,
        T0 + 99,
        '{"n": 1}',
    )
    assert {r["batch_id"] for r in rows} == {first}
    assert all(r["query"] == "user search query" and not r["is_repeat"] for r in rows)

    relevant = export(
        pipeline, first, tmp_path / "relevant.jsonl", "--rows", "training", "--skip-irrelevant"
    )
    assert set(labels(relevant)) == {"s-clicked", "s-last"}

    # The repeat: labelled by all its clicks; only the new one is new.
    again = export(pipeline, second, tmp_path / "second.jsonl", "--rows", "training")
    assert labels(again)["s-clicked"] == [
        ("a", "negative", 0, 0),
        ("b", "positive", 2, 0),
        ("c", "negative", 0, 0),
        ("d", "positive", 1, 0),
        ("e", "positive", 1, 1),
    ]
    assert all(r["is_repeat"] for r in again)
    new_only = export(
        pipeline, second, tmp_path / "new.jsonl", "--rows", "training", "--only-new-clicks"
    )
    assert labels(new_only) == {
        "s-clicked": [
            ("a", "negative", 0, 0),
            ("c", "negative", 0, 0),
            ("e", "positive", 1, 1),
        ]
    }

    as_parquet = export(
        pipeline, first, tmp_path / "first.parquet", "--rows", "training", "--format", "parquet"
    )
    assert as_parquet == rows


def test_pairs_and_triplets_come_from_each_sessions_own_results(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    first, _ = two_batches(pipeline)

    pairs = export(pipeline, first, tmp_path / "pairs.jsonl", "--rows", "pairs")
    triplets = export(pipeline, first, tmp_path / "triplets.jsonl", "--rows", "triplets")
    wide = export(
        pipeline,
        first,
        tmp_path / "wide.parquet",
        "--rows",
        "triplets",
        "--negatives",
        "5",
        "--format",
        "parquet",
    )

    assert sorted((p["session_id"], p["positive_id"]) for p in pairs) == [
        ("s-clicked", "b"),
        ("s-clicked", "d"),
        ("s-irrelevant", "h"),
        ("s-last", "m"),
    ]
    assert next(p for p in pairs if p["positive_id"] == "b")["positive_meta"] == '{"n": 1}'
    # One negative per positive by default, from above the session's last click.
    assert [
        (t["positive_id"], t["negative_id"]) for t in triplets if t["session_id"] == "s-last"
    ] in (
        [("m", "k")],
        [("m", "l")],
    )
    clicked = [
        (t["positive_id"], t["negative_id"]) for t in triplets if t["session_id"] == "s-clicked"
    ]
    assert [p for p, _ in clicked] == ["b", "d"]
    assert all(n in ("a", "c") for _, n in clicked)
    # No negative above h in its session: no triplet.
    assert {t["session_id"] for t in triplets} == {"s-clicked", "s-last"}
    assert sorted((t["positive_id"], t["negative_id"]) for t in wide) == [
        ("b", "a"),
        ("b", "c"),
        ("d", "a"),
        ("d", "c"),
        ("m", "k"),
        ("m", "l"),
    ]
    assert {t["negative_id"]: t["negative_meta"] for t in wide}["a"] == '{"n": 0}'


def test_the_same_batch_exports_to_the_same_bytes(pipeline: Pipeline, tmp_path: Path) -> None:
    first, _ = two_batches(pipeline)

    for rows in ("sessions", "training", "triplets"):
        for file_format in ("jsonl", "parquet"):
            paths = [tmp_path / f"{rows}-{n}.{file_format}" for n in range(2)]
            for path in paths:
                export(pipeline, first, path, "--rows", rows, "--format", file_format)
            assert paths[0].read_bytes() == paths[1].read_bytes(), (rows, file_format)


def test_the_readme_example_loads_with_hugging_face_datasets(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read before the import: no hub, a cache of the test's own.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets  # noqa: PLC0415 - after the settings above

    session_id = f"s-red-shoes-{new_id()}"
    titles = {"shoe-1": "Blue sneaker", "shoe-2": "Black boot", "shoe-3": "Red pump"}
    results = [{"object_id": o, "meta": {"title": t}} for o, t in titles.items()]
    pipeline.register(
        session_body(session_id=session_id, search_query="red shoes", search_results=results)
    )
    pipeline.add_events(session_id, [event_body(object_id="shoe-3")])
    pipeline.wait_session(session_id, events=1)
    released = pipeline.release(new_id())
    assert released.status_code == 200, released.text
    path = tmp_path / "triplets.parquet"
    export(
        pipeline,
        released.json()["batch_id"],
        path,
        "--rows",
        "triplets",
        "--negatives",
        "2",
        "--format",
        "parquet",
    )

    triplets = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )

    assert triplets.select_columns(["query", "positive_id", "negative_id"]).to_list() == [
        {"query": "red shoes", "positive_id": "shoe-3", "negative_id": "shoe-1"},
        {"query": "red shoes", "positive_id": "shoe-3", "negative_id": "shoe-2"},
    ]
    assert [json.loads(m)["title"] for m in triplets["negative_meta"]] == [
        "Blue sneaker",
        "Black boot",
    ]

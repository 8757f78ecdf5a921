"""Two inputs, one output folder: ``inputs/a.png``, ``inputs/a.jpg`` and ``inputs/a.jpeg`` all map to
``outputs/a/``. Each ends with its own result or a failure record that says so; a committed result
is never replaced by another input's, and ``results`` never answers with another input's result.
On the local store and on SeaweedFS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from processor.cli.bucket import cmd_results
from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import ObjectNotFound
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from processor.worker.runner import Worker
from testkit.images import photo_bytes

STORES = ["local", "s3"]


def make_settings(tmp_path: Path):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon"], "poll_interval_s": 0.05},
        "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 96}},
        "pipeline": {"contact_sheet_height": 32},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def run_worker(store: Any, settings: Any) -> int:
    worker = Worker(store, settings, build_registry(settings), worker_id="w1")
    worker.setup()
    return worker.run_once()


def folder(store: Any, prefix: str) -> dict[str, str]:
    return {o.key: o.etag for o in store.list(prefix)}


def manifest(store: Any, layout: KeyLayout, key: str) -> Manifest:
    return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)


def record(store: Any, layout: KeyLayout, key: str) -> FailureRecord:
    return FailureRecord.model_validate_json(store.get(layout.for_input(key).failure).body)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("local_store" if request.param == "local" else "s3_store")


def test_a_later_upload_never_takes_over_a_committed_folder(store: Any, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/a.png", photo_bytes(120, 96, fmt="PNG", seed=1))
    assert run_worker(store, settings) == 0
    committed = folder(store, "outputs/a/")
    assert manifest(store, layout, "inputs/a.png").source.key == "inputs/a.png"

    # Both sort before a.png: by the scan's byte-order rule each would "own" the folder.
    store.put("inputs/a.jpg", photo_bytes(120, 96, seed=2))
    store.put("inputs/a.jpeg", photo_bytes(120, 96, seed=3))
    assert run_worker(store, settings) == 0

    assert folder(store, "outputs/a/") == committed
    for key in ("inputs/a.jpg", "inputs/a.jpeg"):
        failure = record(store, layout, key)
        assert failure.error == "InvalidInput" and "inputs/a.png" in failure.message and failure.final
        assert failure.source.key == key
        assert "Rename" in failure.hint


def test_two_new_inputs_one_commits_the_other_is_told(store: Any, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/b.png", photo_bytes(120, 96, fmt="PNG", seed=1))
    store.put("inputs/b.jpg", photo_bytes(120, 96, seed=2))
    assert run_worker(store, settings) == 0
    owner = manifest(store, layout, "inputs/b.jpg").source.key
    other = ({"inputs/b.jpg", "inputs/b.png"} - {owner}).pop()
    assert owner in ("inputs/b.jpg", "inputs/b.png")
    assert owner in record(store, layout, other).message
    with pytest.raises(ObjectNotFound):
        store.head(layout.for_input(owner).failure)


def test_the_owner_may_replace_its_own_result_and_a_deleted_owners_folder_is_freed(store: Any,
                                                                                  tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/c.png", photo_bytes(120, 96, fmt="PNG", seed=1))
    assert run_worker(store, settings) == 0
    store.put("inputs/c.jpg", photo_bytes(120, 96, seed=2))
    assert run_worker(store, settings) == 0
    # The owner uploads a new photo: its own result is replaced; the other input is still refused.
    store.put("inputs/c.png", photo_bytes(120, 96, fmt="PNG", seed=4))
    assert run_worker(store, settings) == 0
    current = manifest(store, layout, "inputs/c.png")
    assert current.source.key == "inputs/c.png" and current.source.etag == store.head("inputs/c.png").etag
    # The owner is deleted and the other re-uploaded: the stale folder is replaced.
    store.delete("inputs/c.png")
    store.put("inputs/c.jpg", photo_bytes(120, 96, seed=5))
    assert run_worker(store, settings) == 0
    freed = manifest(store, layout, "inputs/c.jpg")
    assert freed.source.key == "inputs/c.jpg" and freed.source.etag == store.head("inputs/c.jpg").etag


def test_results_never_answers_with_another_inputs_result(local_store: Any, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path)
    local_store.put("inputs/d.png", photo_bytes(120, 96, fmt="PNG", seed=1))
    assert run_worker(local_store, settings) == 0
    local_store.put("inputs/d.jpg", photo_bytes(120, 96, seed=2))
    assert run_worker(local_store, settings) == 0
    out = tmp_path / "out"
    args = argparse.Namespace(key="d.jpg", out=str(out))
    assert cmd_results(args, settings) == 1
    err = capsys.readouterr().err
    assert "inputs/d.jpg failed" in err and "inputs/d.png" in err
    assert not out.exists()
    assert cmd_results(argparse.Namespace(key="d.png", out=str(out)), settings) == 0

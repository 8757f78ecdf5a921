"""The worker over a bucket of damaged photos and decode-time bombs: it never dies, it exits 0,
every input ends with exactly one manifest or one failure record, and its health stays green.

The worker runs in process over the local store with the ``toon`` style (no torch), as the other
worker tests do. Every input's key names its sample, seed and mutation (``tests.mutations``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import DecodeBudgetExceeded
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.item import ItemPipeline
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.protocol import BucketQueue
from processor.store.local import LocalStore
from processor.worker.metrics import PrometheusObserver
from processor.worker.runner import Worker
from testkit.images import encode, photo_bytes, photo_image
from tests.decode_bombs import BOMBS
from tests.mutations import corrupt_avif, mutate, samples, tiff_second_page_without_size

#: Mutations per sample in the bucket (11 samples: 220 inputs), seeds apart from the unit fuzz's.
MUTATIONS_PER_SAMPLE = 20
FIRST_SEED = 10_000
#: File extension of each sample's keys (the decoder ignores it; people see it).
EXTENSIONS = {"jpeg-baseline": "jpg", "jpeg-progressive": "jpg", "png": "png", "gif-animated": "gif",
              "webp": "webp", "webp-animated": "webp", "tiff": "tif", "tiff-multipage": "tif", "avif": "avif",
              "heic": "heic", "bmp": "bmp"}
#: Seconds without progress after which the worker would report itself unhealthy (a bomb decoded
#: without a budget costs more than this).
STALL_S = 10.0
#: CPU seconds: the bombs' budget (the floor; next to nothing per megapixel).
TINY_FLOOR_S = 0.25


def make_settings(tmp_path: Path, **decode: object):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        # Never trip the breaker: a crash would show as a StageFailed record, and fail the test.
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, "max_consecutive_failures": 0},
        "styles": {"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
        "pipeline": {"contact_sheet": False, "decode": decode},
        "models": {"offline": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def run_bucket(tmp_path: Path, inputs: dict[str, bytes], *, transient: bool = False,
               **decode: object) -> tuple[LocalStore, Worker, list[str]]:
    """Put ``inputs``, run a worker until they are done, and return what its health said meanwhile
    (``transient``: some items may be left for a later pass)."""
    settings = make_settings(tmp_path, **decode)
    store = LocalStore(settings.store.root)
    for key, data in inputs.items():
        store.put(key, data)
    observer = PrometheusObserver(stall_s=STALL_S)
    worker = Worker(store, settings, build_registry(settings), worker_id="hostile", observer=observer)
    worker.setup()
    unhealthy: list[str] = []
    finished = threading.Event()

    def watch_health() -> None:
        while not finished.wait(0.05):
            alive, why = observer.health()
            if not alive:
                unhealthy.append(why)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        assert worker.run_once() == 0
    finally:
        finished.set()
        watcher.join()
    assert transient or not worker.totals[Outcome.TRANSIENT], worker.totals
    return store, worker, unhealthy


def one_result_each(store: LocalStore, layout: KeyLayout, keys: list[str]) -> dict[str, FailureRecord | Manifest]:
    """Each input's one result; AssertionError listing every input with none or two."""
    listed = {o.key for o in store.list("")}
    results: dict[str, FailureRecord | Manifest] = {}
    problems = []
    for key in keys:
        own = layout.for_input(key)
        has_manifest, has_record = own.manifest in listed, own.failure in listed
        if has_manifest == has_record:
            problems.append(f"{key}: manifest {has_manifest}, failure record {has_record}")
        elif has_manifest:
            results[key] = Manifest.model_validate_json(store.get(own.manifest).body)
        else:
            results[key] = FailureRecord.model_validate_json(store.get(own.failure).body)
    assert not problems, "\n".join(problems)
    return results


def test_hundreds_of_mutated_photos_each_end_with_one_result(tmp_path: Path) -> None:
    inputs: dict[str, bytes] = {}
    for sample, data in samples().items():
        extension = EXTENSIONS[sample]
        inputs[f"inputs/good/{sample}.{extension}"] = data
        for seed in range(FIRST_SEED, FIRST_SEED + MUTATIONS_PER_SAMPLE):
            mutation, mutated = mutate(data, sample, seed)
            inputs[f"inputs/fuzz/{sample}-seed{seed}-{mutation}.{extension}"] = mutated
    inputs["inputs/crafted/corrupt.avif"] = corrupt_avif()
    inputs["inputs/crafted/second-page-without-size.tif"] = tiff_second_page_without_size()

    store, worker, unhealthy = run_bucket(tmp_path, inputs)

    results = one_result_each(store, worker.layout, list(inputs))
    # Every failure is the input's (a final record saying what to change), never a crash of a stage.
    crashes = [f"{key}: {r.error}: {r.message}" for key, r in results.items()
               if isinstance(r, FailureRecord) and not (r.permanent and r.final and r.hint.strip())]
    assert not crashes, "\n".join(crashes)
    assert all(isinstance(results[k], Manifest) for k in inputs if k.startswith("inputs/good/"))
    for key in ("inputs/crafted/corrupt.avif", "inputs/crafted/second-page-without-size.tif"):
        assert isinstance(results[key], FailureRecord) and results[key].error == "CorruptImage", results[key]
    assert sum(isinstance(r, Manifest) for r in results.values()) > len(inputs) // 4  # past the header too
    assert not unhealthy, unhealthy


def test_decode_bombs_become_budget_records_and_health_stays_green(tmp_path: Path) -> None:
    inputs = {f"inputs/bombs/{name}": build() for name, build in BOMBS.items()}
    # Stems differ: two inputs that differ only in extension share one output folder.
    good = {"inputs/good/photo.jpg": photo_bytes(160, 120),
            "inputs/good/drawing.gif": encode(photo_image(96, 72), "GIF")}

    store, worker, unhealthy = run_bucket(tmp_path, {**inputs, **good}, cpu_floor_s=TINY_FLOOR_S,
                                          cpu_s_per_megapixel=0.05)

    results = one_result_each(store, worker.layout, [*inputs, *good])
    for key in inputs:
        record = results[key]
        assert isinstance(record, FailureRecord), key
        assert record.error == DecodeBudgetExceeded.__name__, (key, record.message)
        assert record.permanent and record.final and "pipeline.decode.cpu_floor_s" in record.message
        assert record.attempts == 1  # final on the first attempt: the same bytes cost the same
    assert all(isinstance(results[key], Manifest) for key in good)
    assert worker.totals[Outcome.FAILED] == len(inputs) and worker.totals[Outcome.DONE] == len(good)
    assert not unhealthy, unhealthy


# --- faults in the fetch stage that are not the decoder's ---------------------------------------


def test_a_crash_while_preparing_an_input_is_its_failure_record(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception of the prepare step (a bug a sidecar or photo triggers) is that item's
    retryable StageFailed record; the worker goes on with the others and exits 0."""
    prepare = ItemPipeline.prepare

    def crash_on_one(self: ItemPipeline, body: bytes, *, name: str, **kwargs: object):
        if name.endswith("cursed.jpg"):
            raise KeyError("a bug this input triggers")
        return prepare(self, body, name=name, **kwargs)

    monkeypatch.setattr(ItemPipeline, "prepare", crash_on_one)
    inputs = {"inputs/cursed.jpg": photo_bytes(96, 72, seed=1), "inputs/fine.jpg": photo_bytes(96, 72, seed=2)}
    store, worker, _unhealthy = run_bucket(tmp_path, inputs)
    results = one_result_each(store, worker.layout, list(inputs))
    record = results["inputs/cursed.jpg"]
    assert isinstance(record, FailureRecord) and record.error == "StageFailed"
    assert "preparing the input failed: KeyError" in record.message
    assert not record.permanent and record.final and record.attempts == record.max_attempts  # retried, then final
    assert isinstance(results["inputs/fine.jpg"], Manifest)


def test_a_crash_while_claiming_an_input_leaves_it_for_a_later_pass(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    take = BucketQueue.take
    crashed: list[str] = []

    def crash_once(self: BucketQueue, item):
        if item.keys.input.endswith("first.jpg") and not crashed:
            crashed.append(item.keys.input)
            raise RuntimeError("a bug reading this input's claim")
        return take(self, item)

    monkeypatch.setattr(BucketQueue, "take", crash_once)
    inputs = {"inputs/first.jpg": photo_bytes(96, 72, seed=1), "inputs/second.jpg": photo_bytes(96, 72, seed=2)}
    store, worker, _unhealthy = run_bucket(tmp_path, inputs, transient=True)
    results = one_result_each(store, worker.layout, list(inputs))
    assert worker.totals[Outcome.TRANSIENT] == 1
    assert crashed and all(isinstance(r, Manifest) for r in results.values())

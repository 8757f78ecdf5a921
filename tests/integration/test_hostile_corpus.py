"""The hostile corpus through a real worker, over the local store and a real SeaweedFS.

Every entry of ``tests/corpus.py`` ends exactly as its table row says: a committed manifest (with
the decode notes recorded), a failure record whose message names the problem and whose hint says
what to change, or a key the store refuses at upload. Nothing is skipped silently: every input
the store lists ends with exactly one result, and the worker exits 0 (it never crashes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import InvalidKey, ObjectNotFound, StoreError
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout, is_sidecar
from processor.worker.runner import Worker
from tests.corpus import CORPUS_MAX_BYTES, Entry, corpus

CORPUS = corpus()
#: Prefixes the worker may write under; anything else in the bucket after a run is a leak.
OWN_PREFIXES = ("inputs/", "outputs/", "failed/", ".processor/")


def corpus_settings(tmp_path: Path):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        # One StageFailed trips the breaker: no corpus entry may count as a crash.
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, "max_consecutive_failures": 1,
                "max_variants_per_input": 8},
        "styles": {"toon": {"engine": "toon", "variants": 1, "max_side": 128},
                   # A style a sidecar may name whose model this worker lacks.
                   "unavailable": {"engine": "img2img", "model": "/nonexistent/diffusers-folder"}},
        "pipeline": {"contact_sheet_height": 32, "decode": {"max_bytes": CORPUS_MAX_BYTES}},
        # Hermetic: models the cache lacks are reported, never fetched.
        "models": {"offline": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def test_corpus_names_and_keys_are_unique() -> None:
    assert len({e.name for e in CORPUS}) == len(CORPUS)
    for store in ("local", "s3"):
        keys = [e.stored_key(store) for e in CORPUS if e.expect_for(store).outcome != "refused"]
        assert len(set(keys)) == len(keys), store


def test_corpus_covers_the_issue() -> None:
    """The issue's list, item by item (HEIC only where this libheif can encode)."""
    names = {e.name for e in CORPUS}
    wanted = {
        "empty", "truncated-jpeg", "truncated-png", "truncated-webp", "text-as-png", "html-as-jpg",
        "png-bomb-40000", "png-bomb-real-8000", "jpeg-bomb-65000", "webp-bomb-16383", "gif-bomb-65535",
        "one-pixel", "png-16bit", "png-16bit-rgb", "cmyk-jpeg", "palette-transparent-png", "animated-gif",
        "animated-webp", "exif-rotated-jpeg", "over-byte-limit", "sidecar-invalid-json", "key-spaces",
        "key-unicode", "key-dotdot", "key-double-slash", "key-leading-slash",
        # Issue 14: sidecars are untrusted input.
        "sidecar-seed-negative", "sidecar-seed-huge", "sidecar-number-5000-digits", "sidecar-nan",
        "sidecar-duplicate-styles", "sidecar-too-many-styles", "sidecar-over-variant-cap", "sidecar-unknown-style",
        "sidecar-style-model-missing", "sidecar-background-model-missing",
    }
    assert wanted <= names, wanted - names
    if "heic" not in names:
        pytest.skip("this libheif has no HEVC encoder: the HEIC entries were left out")


def _upload(store, entry: Entry, store_kind: str) -> None:
    expect = entry.expect_for(store_kind)
    if expect.outcome == "refused":
        refused = InvalidKey if store_kind == "local" else StoreError
        with pytest.raises(refused):
            store.put(entry.key, entry.body)
        return
    store.put(entry.key, entry.body)
    if entry.sidecar is not None:
        stem = entry.key.rsplit(".", 1)[0]
        store.put(stem + ".json", entry.sidecar)


def _check(store, layout: KeyLayout, entry: Entry, store_kind: str) -> None:
    expect = entry.expect_for(store_kind)
    key = entry.stored_key(store_kind)
    keys = layout.for_input(key)
    etag = store.head(key).etag
    if expect.outcome == "done":
        manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
        assert manifest.source.key == key and manifest.source.etag == etag
        assert manifest.source.format == expect.format
        if expect.notes:
            for note in expect.notes:
                assert note in manifest.source.notes, manifest.source.notes
        else:
            assert manifest.source.notes == [], manifest.source.notes
        assert manifest.variants, "a committed input has variants"
        for variant in manifest.variants:
            assert variant.key.startswith(keys.output_prefix)
            assert hashlib.sha256(store.get(variant.key).body).hexdigest() == variant.sha256
        with pytest.raises(ObjectNotFound):
            store.head(keys.failure)
    else:
        record = FailureRecord.model_validate_json(store.get(keys.failure).body)
        assert record.source.key == key and record.source.etag == etag
        assert record.error == expect.error, record.message
        for word in expect.words:
            assert word in record.message, record.message
        assert record.hint.strip() and record.permanent == expect.permanent
        assert record.final == expect.permanent  # a style a worker lacks waits for one that has it
        with pytest.raises(ObjectNotFound):
            store.head(keys.manifest)


def _run_corpus(store, tmp_path: Path, store_kind: str) -> None:
    settings = corpus_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    for entry in CORPUS:
        _upload(store, entry, store_kind)

    worker = Worker(store, settings, build_registry(settings), worker_id="hostile")
    worker.setup()
    assert worker.run_once() == 0
    assert not worker.totals["transient"], worker.totals

    failures = []
    for entry in CORPUS:
        if entry.expect_for(store_kind).outcome == "refused":
            continue
        try:
            _check(store, layout, entry, store_kind)
        except (AssertionError, StoreError) as exc:
            failures.append(f"{entry.name} ({entry.stored_key(store_kind)!r}): {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)

    # Nothing skipped silently: every listed input (whatever its key) has exactly one result,
    # and the store holds nothing outside the worker's own prefixes.
    expected = {e.stored_key(store_kind) for e in CORPUS if e.expect_for(store_kind).outcome != "refused"}
    listed = [o.key for o in store.list("")]
    inputs = {k for k in listed if k.startswith("inputs/") and not is_sidecar(k)}
    assert inputs == expected
    present = set(listed)
    for key in inputs:
        keys = layout.for_input(key)
        assert (keys.manifest in present) != (keys.failure in present), key
    assert all(k.startswith(OWN_PREFIXES) for k in listed), [k for k in listed if not k.startswith(OWN_PREFIXES)]
    assert not [k for k in listed if ".." in k.split("/")]


def test_corpus_over_the_local_store(local_store, tmp_path: Path) -> None:
    _run_corpus(local_store, tmp_path, "local")


def test_corpus_over_seaweedfs(s3_store, tmp_path: Path) -> None:
    _run_corpus(s3_store, tmp_path, "s3")


def test_file_dropped_into_a_local_bucket_with_a_backslash_gets_a_failure_record(local_store, tmp_path: Path) -> None:
    """A name the store refuses as a key can still appear on disk: it must fail visibly, not loop."""
    from testkit.images import photo_bytes

    settings = corpus_settings(tmp_path)
    (local_store.root / "inputs").mkdir()
    (local_store.root / "inputs" / "a\\..\\b.jpg").write_bytes(photo_bytes(96, 80))
    worker = Worker(local_store, settings, build_registry(settings), worker_id="hostile")
    worker.setup()
    assert worker.run_once() == 0
    keys = KeyLayout(settings.prefixes).for_input("inputs/a\\..\\b.jpg")
    assert keys.failure == "failed/a%5C..%5Cb.jpg.json"
    record = FailureRecord.model_validate_json(local_store.get(keys.failure).body)
    assert record.error == "InvalidInput" and "backslash" in record.message and "Rename" in record.hint

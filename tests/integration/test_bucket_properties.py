"""Issue 14's proof: nothing a user uploads, names or plants in the bucket stops a worker or touches
another input's result.

- a property test (hypothesis) draws hostile bucket states (``tests/bucket_states.py``) on the local
  store, runs ``processor run --once`` in-process, checks the invariants, snapshots the commits,
  uploads names that collide with them and runs again: every commit stays byte for byte;
- the keys that collide on a file system (a failure record that is another input's record folder,
  an output name that is another input's output folder, a record key blocked by a foreign object)
  end with a record each and never make the worker retry forever;
- the acceptance run: one fixed bucket mixing good photos with every class, on the local store and
  on SeaweedFS (SSE-C objects there), exits 0 with every input accounted for and every earlier
  commit unchanged.

With ``CI`` set (``.ci/run``) the property tests are derandomized: the same examples every run.
``BUCKET_PROPERTY_EXAMPLES`` (default 12) sets how many bucket states one run draws.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from processor.config import PrefixSettings
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from processor.queue.requeue import find_failures
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.bucket_states import (
    CLAIM_GARBAGE,
    CONTENTS,
    EXTENSIONS,
    NESTED,
    RECORD_GARBAGE,
    SIDECARS,
    STEMS,
    BucketState,
    PlantedInput,
    check_invariants,
    input_keys,
    objects,
    plant,
    run_cli,
    snapshot_commits,
    write_config,
)

#: Examples per run: each runs the worker twice over up to 8 inputs (about 1 s each here).
MAX_EXAMPLES = int(os.environ.get("BUCKET_PROPERTY_EXAMPLES", "12"))
#: CI draws the same examples every run (a red build is reproducible, and flakes cannot hide in it).
DERANDOMIZE = bool(os.environ.get("CI"))

_stems = st.sampled_from(STEMS)
_exts = st.sampled_from(EXTENSIONS)
_relpaths = st.one_of(
    st.builds(lambda s, e: s + e, _stems, _exts),
    st.builds(lambda f, s, e: f.format(stem=s, ext=e), st.sampled_from(NESTED), _stems, _exts),
)
_maybe = lambda values: st.none() | st.sampled_from(sorted(values))  # noqa: E731
_inputs = st.builds(
    PlantedInput,
    relpath=_relpaths,
    content=st.sampled_from(CONTENTS),
    seed=st.integers(0, 5),
    manifest=_maybe(RECORD_GARBAGE),
    record=_maybe(RECORD_GARBAGE),
    claim=_maybe(CLAIM_GARBAGE),
    marker=st.booleans(),
    unreadable=st.integers(0, 6).map(lambda n: n == 0),
    vanishes=st.integers(0, 9).map(lambda n: n == 0),
)
_states = st.builds(
    BucketState,
    inputs=st.lists(_inputs, min_size=1, max_size=8),
    sidecars=st.dictionaries(_stems, st.sampled_from(sorted(SIDECARS)), max_size=3),
    unreadable_sidecars=st.just(set()) | st.sets(_stems, max_size=1),
)


def _second_wave(store: Any, layout: KeyLayout, seed: int) -> None:
    """Names that collide with every committed result: the same stem under other extensions,
    names nesting in its folder, and a name whose record nests in its record."""
    existing = input_keys(store, layout)
    for i, key in enumerate(sorted(existing)):
        stem, ext = key[len(layout.prefixes.inputs):].rsplit(".", 1) if "." in key else (key, "")
        for j, name in enumerate([f"{stem}.jpeg", f"{stem}.PNG", f"{stem}/manifest.json.png",
                                  f"{stem}/toon-00.png.jpg", f"{stem}.{ext}.json/y.png"]):
            if layout.prefixes.inputs + name in existing:
                continue  # a new version of a committed input may replace its own result
            try:
                store.put(layout.prefixes.inputs + name, photo_bytes(80, 64, seed=seed + i + j))
            except Exception:  # noqa: BLE001 - the store refuses it (a file where a folder is): not planted
                pass


def run_and_check(store: Any, config: Path, layout: KeyLayout, state: BucketState) -> None:
    unreadable, vanish = plant(store, layout, state)
    before = objects(store)
    code = run_cli(config, store, unreadable, vanish)
    results = check_invariants(store, layout, code=code, before=before)
    # What the examples reached (pytest --hypothesis-show-statistics): commits and each record class.
    for result in results.values():
        event(f"first run: {'manifest' if isinstance(result, Manifest) else 'record ' + result.error}")

    committed = snapshot_commits(store, layout)
    _second_wave(store, layout, seed=100)
    before = objects(store)
    code = run_cli(config, store, unreadable)
    check_invariants(store, layout, code=code, before=before, committed=committed)
    event(f"commits kept through the second run: {min(len(committed), 3)}{'+' if len(committed) > 3 else ''}")


# No explain phase: it reruns each failing example dozens of times (minutes) to annotate lines.
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, print_blob=True,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(state=_states)
def test_any_bucket_state_ends_with_every_input_accounted_for_and_no_commit_touched(
        state: BucketState, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("bucket-state")
    config, cfg = write_config(root)
    run_and_check(LocalStore(cfg.store.root), config, KeyLayout(cfg.prefixes), state)


# --------------------------------------------------------------------------- keys that collide on a file system


def _leaves_and_folders(layout: KeyLayout, key: str, etag: str) -> tuple[set[str], set[str]]:
    """The record and marker keys of one input version, and every folder they need."""
    keys = layout.for_input(key)
    leaves = {keys.failure, keys.done_marker(etag, "done"), keys.done_marker(etag, "failed"), keys.claim}
    folders = {leaf[: i + 1] for leaf in leaves for i, c in enumerate(leaf) if c == "/"}
    return leaves, folders


@settings(max_examples=400, deadline=None, derandomize=DERANDOMIZE)
@given(a=_relpaths, b=_relpaths, etag=st.sampled_from(["0" * 32, "y.png", "e"]))
def test_no_record_or_marker_key_is_another_inputs_folder(a: str, b: str, etag: str) -> None:
    """For two inputs a file system can hold side by side, no failure record, done marker or claim
    of one is a folder the other's need (outputs are the documented exception: refused, recorded)."""
    layout = KeyLayout(PrefixSettings())
    ka, kb = "inputs/" + a, "inputs/" + b
    if ka == kb or kb.startswith(ka + "/") or ka.startswith(kb + "/"):
        return  # a file and a folder of one name: the store refuses the second upload
    leaves_a, folders_a = _leaves_and_folders(layout, ka, etag)
    leaves_b, folders_b = _leaves_and_folders(layout, kb, etag)
    assert not leaves_a & folders_b and not leaves_b & folders_a, (ka, kb)
    assert not leaves_a & leaves_b, (ka, kb)


def _run(store: Any, config: Path) -> int:
    return run_cli(config, store)


def test_a_record_that_was_another_inputs_record_folder_gets_written(tmp_path: Path) -> None:
    """``inputs/x.png`` and ``inputs/x.png.json/y.png``, both bad: each gets its record (it used to be
    retried every pass: ``run --once`` exited 8, the daemon looped)."""
    config, cfg = write_config(tmp_path)
    layout = KeyLayout(cfg.prefixes)
    store = LocalStore(cfg.store.root)
    for key in ("inputs/x.png", "inputs/x.png.json/y.png", "inputs/X.PNG.JSON/z.png"):
        store.put(key, b"not an image")
    before = objects(store)
    results = check_invariants(store, layout, code=_run(store, config), before=before)
    assert {k: r.error for k, r in results.items()} == dict.fromkeys(before, "UnsupportedFormat")
    assert layout.for_input("inputs/x.png.json/y.png").failure == "failed/x.png%2Ejson/y.png.json"
    # `processor retry --prefix` narrows its listing through the same escape.
    found = find_failures(store, layout, include_permanent=True, prefix="inputs/x.png.json/")
    assert [f.record.source.key for f in found.failures] == ["inputs/x.png.json/y.png"]
    assert [f.marked for f in found.failures] == [True]


def test_an_output_name_that_is_another_inputs_folder_fails_that_input_only(tmp_path: Path) -> None:
    """``outputs/a/manifest.json`` is a file; ``inputs/a/manifest.json.png`` needs it as a folder.
    Whichever commits first keeps its result; the other gets a record naming the clash, in either
    order, and nothing committed changes."""
    for first, second in (("inputs/a.png", "inputs/a/manifest.json.png"),
                          ("inputs/a/manifest.json.png", "inputs/a.png")):
        root = tmp_path / first.replace("/", "_")
        root.mkdir()
        config, cfg = write_config(root)
        layout = KeyLayout(cfg.prefixes)
        store = LocalStore(cfg.store.root)
        store.put(first, photo_bytes(80, 64, seed=1))
        check_invariants(store, layout, code=_run(store, config), before=objects(store))
        committed = snapshot_commits(store, layout)
        assert len(committed) == 1
        store.put(second, photo_bytes(80, 64, seed=2))
        results = check_invariants(store, layout, code=_run(store, config), before=objects(store),
                                   committed=committed)
        assert isinstance(results[first], Manifest)
        record = results[second]
        assert isinstance(record, FailureRecord) and record.error == "InvalidInput", record
        assert "cannot be stored" in record.message and "Rename" in record.hint


def test_a_record_key_blocked_by_a_foreign_object_is_marked_failed_not_retried(tmp_path: Path) -> None:
    """An object outside our layout (``failed/q.png.json/planted``) makes the record key a folder:
    the input gets its ``failed`` done marker, the run exits 0, and the next run leaves it alone."""
    config, cfg = write_config(tmp_path)
    layout = KeyLayout(cfg.prefixes)
    store = LocalStore(cfg.store.root)
    store.put("inputs/q.png", b"not an image")
    store.put("failed/q.png.json/planted", b"x")
    assert _run(store, config) == 0
    etag = store.head("inputs/q.png").etag
    store.head(layout.for_input("inputs/q.png").done_marker(etag, "failed"))
    before = objects(store)
    assert _run(store, config) == 0
    assert objects(store) == before


# --------------------------------------------------------------------------- the acceptance run


#: Sidecars the mixed bucket pairs with photos: the InvalidSidecar ones, and one valid.
MIXED_SIDECARS = {"side-huge": b'{"variants": 1000000000}', "side-deep": b"[" * 30_000 + b"]" * 30_000,
                  "side-binary": b"\xff\xfe\x00", "side-negative-seed": b'{"seed": -1}',
                  "side-oversized": b" " * (2 << 20)}


def _acceptance(store: Any, root: Path, *, plant_unreadable: Any) -> None:
    """Earlier commits, then one bucket mixing good photos with every class of issue 14; one
    ``processor run --once`` exits 0, accounts for every input and changes no earlier commit.
    ``plant_unreadable(key, body)`` uploads an object the worker may not read and returns the set
    of keys the ``Hostile`` store must refuse (empty where the store itself refuses, as SSE-C)."""
    config, cfg = write_config(root)
    cfg_json = json.loads(config.read_text())
    # A planted claim is fresh on S3 (no way to age it): a short cap lets the run take it over.
    cfg_json["claims"] = {"ttl_s": 2, "renew_s": 0.5, "max_ttl_s": 3}
    config.write_text(json.dumps(cfg_json))
    layout = KeyLayout(cfg.prefixes)
    earlier = ["inputs/a.png", "inputs/good-1.jpg", "inputs/sub/toy.png"]
    for i, key in enumerate(earlier):
        store.put(key, photo_bytes(80, 64, seed=i))
    check_invariants(store, layout, code=run_cli(config, store), before=objects(store))
    committed = snapshot_commits(store, layout)
    assert set(committed) == {layout.for_input(k).manifest for k in earlier}

    photo = lambda seed: photo_bytes(80, 64, seed=seed)  # noqa: E731
    expected: dict[str, tuple[str, ...]] = {k: ("manifest",) for k in earlier}
    uploads = {"inputs/good-2.jpg": ("manifest",), "inputs/good-3.png": ("manifest",),
               "inputs/a.jpg": ("InvalidInput", "inputs/a.png"), "inputs/a.jpeg": ("InvalidInput", "inputs/a.png"),
               "inputs/A.jpg": ("manifest",),
               # Nests in outputs/a/: the local store refuses it (recorded), S3 keeps both.
               "inputs/a/manifest.json.png": ("manifest", "InvalidInput"),
               "inputs/a/toon-00.png.jpg": ("manifest", "InvalidInput"),
               "inputs/sub/toy.jpg": ("InvalidInput", "inputs/sub/toy.png"),
               "inputs/side-valid.jpg": ("manifest",), "inputs/claimed.jpg": ("manifest",),
               "inputs/garbage-manifest.jpg": ("manifest",), "inputs/garbage-record.jpg": ("manifest",)}
    for i, (key, want) in enumerate(uploads.items()):
        store.put(key, photo(10 + i))
        expected[key] = want
    for i, (name, body) in enumerate(MIXED_SIDECARS.items()):
        store.put(f"inputs/{name}.jpg", photo(40 + i))
        store.put(f"inputs/{name}.json", body)
        expected[f"inputs/{name}.jpg"] = ("InvalidSidecar",)
    store.put("inputs/side-valid.json", b'{"seed": 7, "styles": ["toon"]}')
    for key in ("inputs/bad.png", "inputs/bad.png.json/y.png"):  # records that used to nest
        store.put(key, b"not an image")
        expected[key] = ("UnsupportedFormat",)
    keys = layout.for_input("inputs/claimed.jpg")
    store.put(keys.claim, CLAIM_GARBAGE["absurd-ttl"])
    store.put(layout.for_input("inputs/garbage-manifest.jpg").manifest, b"\x00 not a manifest")
    store.put(layout.for_input("inputs/garbage-record.jpg").failure, b"{" + b" " * (2 << 20) + b"}")
    store.put(keys.done_prefix + "junk.finished", b"garbage done marker")
    unreadable = plant_unreadable("inputs/unreadable.jpg", photo(60))
    expected["inputs/unreadable.jpg"] = ("InputUnreadable",)
    store.put("inputs/gone.jpg", photo(61))

    def expect(key: str, result: Manifest | FailureRecord) -> None:
        want = expected[key]
        got = "manifest" if isinstance(result, Manifest) else result.error
        assert got in want, (key, got, getattr(result, "message", ""))
        if isinstance(result, FailureRecord) and want[0] == "InvalidInput" and len(want) > 1:
            assert want[1] in result.message, (key, result.message)

    before = objects(store)
    code = run_cli(config, store, unreadable, {"inputs/gone.jpg"})
    results = check_invariants(store, layout, code=code, before=before, committed=committed, expect=expect)
    assert set(results) == set(expected), set(results) ^ set(expected)
    # The vanished input's record says so, and is retryable: no done marker blocks a re-upload.
    gone = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/gone.jpg").failure).body)
    assert gone.error == "InputVanished" and not gone.final
    assert not list(store.list(layout.for_input("inputs/gone.jpg").done_prefix))


def test_acceptance_mixed_bucket_on_the_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")

    def unreadable(key: str, body: bytes) -> set[str]:
        store.put(key, body)
        return {key}  # EACCES cannot be had as root: the Hostile store refuses it as the OS would

    _acceptance(store, tmp_path, plant_unreadable=unreadable)


def test_acceptance_mixed_bucket_on_seaweedfs(s3_server: Any, s3_store: Any, tmp_path: Path) -> None:
    def unreadable(key: str, body: bytes) -> set[str]:
        # SSE-C with a key the worker never gets: SeaweedFS itself refuses the GET and the HEAD.
        s3_server.client().put_object(Bucket=s3_store.bucket, Key=key, Body=body, SSECustomerAlgorithm="AES256",
                                      SSECustomerKey=os.urandom(32))
        return set()

    _acceptance(s3_store, tmp_path, plant_unreadable=unreadable)

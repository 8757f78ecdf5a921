"""The API reads job state through the bucket protocol, with the worker's caps and judgements, and
answers every hostile bucket state or id with a state or a 404 that ``processor status`` agrees
with: never a 503, never an endless ``queued``. Each case runs against the real app (TestClient)
over the local store and over SeaweedFS."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.config import Settings, load_settings
from processor.manifest import MAX_RECORD_BYTES, Manifest, Source, WorkerInfo
from processor.pipeline.render import EngineRegistry
from processor.pipeline.toon import ToonEngine
from processor.queue.claims import MAX_CLAIM_BYTES, ClaimManager
from processor.queue.jobs import JobStatus, job_id, relpath_of
from processor.queue.keys import KeyLayout
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from tests.bucket_states import CLAIM_GARBAGE, Hostile

#: Seconds: the claim TTL cap of these tests (claims.max_ttl_s), short so that the S3 case can
#: watch a planted claim expire on the server's clock.
MAX_TTL_S = 2.0
#: Bytes one job read may cost the API however large the planted records are: a claim, the
#: empty listing of done markers, nothing of a record over ``MAX_RECORD_BYTES``.
READ_BUDGET_BYTES = 64 * 1024
#: Ids of inputs no store can hold (or that SeaweedFS would alias to another key).
HOSTILE_RELPATHS = ["a\0b.png", "../x.png", "a/../b.png", "./b.png", "a//b.png", "/b.png", "a\\b.png",
                    "x" * 1100 + ".png", "a/" * 520 + "b.png", "b.png/", "b.json"]


class Metered:
    """The store the API sees: the real one, counting the body bytes its reads return."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str, *, max_bytes: int | None = None) -> Any:
        found = self.inner.get(key, max_bytes=max_bytes)
        self.bytes_read += len(found.body)
        return found


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"], "poll_interval_s": 0.05},
                         pipeline={"contact_sheet_height": 32},
                         claims={"ttl_s": 1, "renew_s": 0.5, "max_ttl_s": MAX_TTL_S})


@pytest.fixture
def metered(store: Any) -> Metered:
    return Metered(store)


@pytest.fixture
def client(settings: Settings, metered: Metered) -> Iterator[TestClient]:
    yield TestClient(create_app(settings, metered, keys=[]), base_url=OPEN_BASE_URL)


def run_worker(store: Any, settings: Settings) -> None:
    registry = EngineRegistry(settings.styles, lambda name, style: ToonEngine(name, style))
    worker = Worker(store, settings, registry, worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0


def submit(client: TestClient, image: bytes | None = None) -> str:
    resp = client.post("/v1/jobs", files={"image": ("t.jpg", image or photo_bytes(96, 72))})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def keys_of(settings: Settings, job: str):
    return KeyLayout(settings.prefixes).for_input(settings.prefixes.inputs + relpath_of(job))


def status(client: TestClient, job: str) -> dict:
    resp = client.get(f"/v1/jobs/{job}")
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("planted", ["manifest", "failure", "claim"])
def test_oversized_records_cost_the_api_nothing_and_the_worker_replaces_them(
        client: TestClient, metered: Metered, settings: Settings, store: Any, planted: str) -> None:
    job = submit(client)
    keys = keys_of(settings, job)
    target = {"manifest": keys.manifest, "failure": keys.failure, "claim": keys.claim}[planted]
    store.put(target, b"{" + b" " * (2 * MAX_RECORD_BYTES) + b"}")
    before = metered.bytes_read
    assert status(client, job)["status"] == "queued"
    assert metered.bytes_read - before < READ_BUDGET_BYTES
    if planted == "claim":
        # Garbage: the worker waits out the cap (claims.max_ttl_s) before taking it over, like any
        # dead worker's claim; the API does not call it running meanwhile.
        deadline = time.monotonic() + MAX_TTL_S + 10
        while ClaimManager(store, "w0", 1, MAX_TTL_S).acquire(keys.claim, keys.input, "e") is None:
            assert time.monotonic() < deadline, "the garbage claim never expired"
            time.sleep(0.2)
        store.delete(keys.claim)
    run_worker(store, settings)
    assert status(client, job)["status"] == "done"


def test_an_absurd_ttl_is_capped_for_the_api_as_for_the_worker(client: TestClient, settings: Settings,
                                                                store: Any) -> None:
    job = submit(client)
    keys = keys_of(settings, job)
    etag = store.head(keys.input).etag
    store.put(keys.claim, json.dumps({"worker": "evil", "token": "t", "etag": etag, "ttl_s": 1e12,
                                      "progress": {"stage": "style:toon"}}).encode())
    assert status(client, job)["status"] == "running"
    assert ClaimManager(store, "w2", 1, MAX_TTL_S).acquire(keys.claim, keys.input, etag) is None
    if isinstance(store, LocalStore):
        then = time.time() - 10 * MAX_TTL_S
        os.utime(store.root / keys.claim, (then, then))
    deadline = time.monotonic() + MAX_TTL_S + 10
    while status(client, job)["status"] == "running":  # the server's clock: S3 dates are whole seconds
        assert time.monotonic() < deadline, "a claim with an absurd TTL stayed running past claims.max_ttl_s"
        time.sleep(0.2)
    assert status(client, job)["status"] == "queued"
    assert ClaimManager(store, "w2", 1, MAX_TTL_S).acquire(keys.claim, keys.input, etag) is not None


CLAIMS = dict(CLAIM_GARBAGE) | {
    "honest": b'{"worker": "w", "token": "t", "etag": "%(etag)s", "ttl_s": 1}',
    "absurd-ttl-this-version": b'{"worker": "w", "token": "t", "etag": "%(etag)s", "ttl_s": 1e300}',
    "negative-ttl-this-version": b'{"worker": "w", "token": "t", "etag": "%(etag)s", "ttl_s": -5}',
    "other-version": b'{"worker": "w", "token": "t", "etag": "not-it", "ttl_s": 1}',
}


@pytest.mark.parametrize("age_s", [0.0, 1.5, 10 * MAX_TTL_S])
@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_the_api_calls_running_exactly_what_a_worker_will_not_take_over(tmp_path, settings: Settings,
                                                                        claim: str, age_s: float) -> None:
    """One judgement (``claims.judge_claim``) for both: a claim on this version is ``running`` in
    the API while, and only while, a worker refuses to take it over; any other never is."""
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    store.put("inputs/toy.jpg", photo_bytes(64, 48))
    keys = queue.layout.for_input("inputs/toy.jpg")
    etag = store.head(keys.input).etag
    body = CLAIMS[claim].replace(b"%(etag)s", etag.encode())
    store.put(keys.claim, body)
    then = time.time() - age_s
    os.utime(store.root / keys.claim, (then, then))
    running = queue.state(job_id("toy.jpg")).status.value == "running"
    taken = ClaimManager(store, "w9", 1, MAX_TTL_S).acquire(keys.claim, keys.input, etag) is not None
    if b'"etag": "' + etag.encode() in body:
        assert running == (not taken), (claim, age_s, running, taken)
    else:
        assert not running


def test_a_deleted_manifest_is_done_with_a_detail_as_status_counts_it(client: TestClient, settings: Settings,
                                                                       store: Any) -> None:
    job = submit(client)
    run_worker(store, settings)
    assert status(client, job)["status"] == "done"
    store.delete(keys_of(settings, job).manifest)
    body = status(client, job)
    assert body["status"] == "done" and body["manifest"] is None and body["variants"] == []
    assert "manifest" in body["detail"] and "upload the photo again" in body["detail"]
    assert BucketQueue.for_settings(store, settings).status().done == 1  # processor status agrees
    with client.stream("GET", f"/v1/jobs/{job}/events") as events:
        assert "event: done" in events.read().decode()  # the stream ends, as for any ended job
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200 and 'data-role="detail"' in page.text


def test_a_stream_opened_on_a_queued_job_says_status_then_done(client: TestClient, settings: Settings,
                                                                store: Any) -> None:
    """The stream's first event is the job's state when it opened (queued: ``status``); the worker
    runs only once the stream is open, and the stream ends with ``done``."""
    job = submit(client)
    with client.stream("GET", f"/v1/jobs/{job}/events") as events:
        lines = events.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: status"
        worker = threading.Thread(target=run_worker, args=(store, settings))
        worker.start()
        kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
        worker.join()
    assert kinds[-1] == "done" and set(kinds) <= {"status", "progress", "done"}, kinds


def test_a_commit_landing_while_the_state_is_read_is_a_result_not_a_deleted_manifest(settings: Settings,
                                                                                     store: Any) -> None:
    """The worker writes the manifest, then the done marker. A reader whose manifest read came just
    before the commit, and whose marker read just after it, reads the manifest again."""
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(96, 72), format="JPEG"))
    run_worker(store, settings)
    manifest_key = keys_of(settings, job).manifest
    committed = store.get(manifest_key).body
    store.delete(manifest_key)
    reads = []

    class CommitDuringRead(Metered):
        def get(self, key: str, *, max_bytes: int | None = None) -> Any:
            reads.append(key)
            try:
                return super().get(key, max_bytes=max_bytes)
            finally:
                if key == manifest_key and reads.count(key) == 1:
                    store.put(manifest_key, committed)  # the commit lands right after this read

    state = BucketQueue.for_settings(CommitDuringRead(store), settings).state(job)
    assert state.status is JobStatus.done and state.manifest is not None and state.detail is None
    assert reads.count(manifest_key) == 2


def test_a_failed_job_without_its_record_is_failed_and_can_be_retried(client: TestClient, settings: Settings,
                                                                       store: Any) -> None:
    job = submit(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # sniffed as PNG, undecodable
    run_worker(store, settings)
    first = status(client, job)
    assert first["status"] == "failed"
    store.delete(keys_of(settings, job).failure)
    body = status(client, job)
    assert body["status"] == "failed" and body["failure"] is None and "failure record" in body["detail"]
    assert BucketQueue.for_settings(store, settings).status().failed == 1
    retried = client.post(f"/v1/jobs/{job}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued", retried.text
    run_worker(store, settings)
    again = status(client, job)
    assert again["status"] == "failed" and again["failure"]["error"] == first["failure"]["error"]


@pytest.mark.parametrize("relpath", HOSTILE_RELPATHS, ids=lambda p: repr(p[:12]))
def test_ids_of_keys_no_store_holds_are_404_everywhere(client: TestClient, store: Any, relpath: str) -> None:
    store.put("inputs/b.png", photo_bytes(64, 48))
    store.put("inputs/a/b.png", photo_bytes(64, 48))  # what SeaweedFS turns a//b.png and a\b.png into
    job = job_id(relpath)
    for method, path in [("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                         ("POST", f"/v1/jobs/{job}/retry"), ("GET", f"/v1/jobs/{job}/files/toon-00.png"),
                         ("GET", f"/jobs/{job}"), ("POST", f"/jobs/{job}/retry")]:
        resp = client.request(method, path, headers={"Origin": OPEN_BASE_URL})
        assert resp.status_code == 404, (method, path[:60], resp.status_code, resp.text[:300])
    assert client.get("/v1/jobs", params={"cursor": job}).status_code == 422


def test_a_deleted_photo_is_404_and_leaves_the_listing(client: TestClient, settings: Settings, store: Any) -> None:
    job = submit(client)
    kept = submit(client, photo_bytes(90, 70, seed=3))
    store.delete(keys_of(settings, job).input)
    for method, path in [("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                         ("POST", f"/v1/jobs/{job}/retry"), ("GET", f"/jobs/{job}")]:
        assert client.request(method, path, headers={"Origin": OPEN_BASE_URL}).status_code == 404, path
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [kept]
    assert BucketQueue.for_settings(store, settings).status().inputs == 1


def test_a_manifest_of_another_input_is_not_this_jobs_result(client: TestClient, settings: Settings,
                                                             store: Any) -> None:
    """``a.png`` and ``a.jpg`` with the same bytes (the same ETag) share ``outputs/a/``: a.png's
    manifest there is not a.jpg's result, for the API as for the worker (which fails a.jpg)."""
    photo = photo_bytes(96, 72, fmt="PNG")
    store.put("inputs/a.png", photo)
    run_worker(store, settings)
    store.put("inputs/a.jpg", photo)
    assert status(client, job_id("a.png"))["status"] == "done"
    assert status(client, job_id("a.jpg"))["status"] == "queued"
    run_worker(store, settings)
    failed = status(client, job_id("a.jpg"))
    assert failed["status"] == "failed" and "a.png" in failed["failure"]["message"]


def test_inputs_no_id_can_name_are_left_out_of_the_listing(tmp_path, settings: Settings) -> None:
    """On AWS S3 a key may hold a '..' segment; no id names it (as on every other store), so a page
    never offers one that answers 404."""
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    store.put("inputs/ok.png", photo_bytes(64, 48))

    class Listing:  # the store's listing as AWS could answer it
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def list(self, prefix: str, *, start_after: str = "") -> Iterator[Any]:
            if prefix != "inputs/":
                yield from store.list(prefix, start_after=start_after)
                return
            info = store.head("inputs/ok.png")
            for key in ("inputs/a/../b.png", "inputs/ok.png", "inputs/x//y.png"):
                if key > start_after:
                    yield type(info)(key=key, etag=info.etag, size=info.size, last_modified=info.last_modified)

    queue.store = Listing()  # type: ignore[assignment]
    assert [s.input_key for s in queue.page(None, 10).jobs] == ["inputs/ok.png"]


def test_garbage_in_the_api_records_is_refused_not_trusted(tmp_path, settings: Settings) -> None:
    from processor.queue.idempotency import IdempotencyConflict
    from processor.queue.submit import Submission
    from processor.queue.webhook_records import MAX_WEBHOOK_RECORD_BYTES

    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    planted = queue.idempotency.key_for("", "k1")
    for garbage in (b"\xff not json", b"[]", b'{"job": 7}', b" " * 8192):
        store.put(planted, garbage)
        with pytest.raises(IdempotencyConflict) as caught:
            queue.submit(Submission(image=photo_bytes(64, 48), format="JPEG"), idempotency_key="k1")
        assert caught.value.job_id is None
    assert not any(o.key.startswith("inputs/") for o in store.list(""))  # no job written
    queue.webhooks.add("job-1", "https://hooks.example.com/a")
    store.put(queue.layout.webhooks_prefix + "pending/job-2.json", b" " * (MAX_WEBHOOK_RECORD_BYTES + 1))
    store.put(queue.layout.webhooks_prefix + "pending/job-3.json", b'{"url": ["not", "a", "url"]}')
    assert [(d.job, d.url) for d in queue.webhooks.pending()] == [("job-1", "https://hooks.example.com/a")]


def test_a_claim_is_read_with_its_cap(tmp_path, settings: Settings) -> None:
    store = Metered(LocalStore(tmp_path / "bucket"))
    queue = BucketQueue.for_settings(store, settings)  # type: ignore[arg-type]
    store.put("inputs/toy.jpg", photo_bytes(64, 48))
    keys = queue.layout.for_input("inputs/toy.jpg")
    store.put(keys.claim, b'{"pad": "' + b"x" * (MAX_CLAIM_BYTES * 100) + b'"}')
    assert queue.state(job_id("toy.jpg")).status.value == "queued"
    assert store.bytes_read <= MAX_CLAIM_BYTES


def test_a_forged_done_manifest_names_only_files_of_its_folder(tmp_path, settings: Settings) -> None:
    """The one file-name rule decides what a manifest may point the API at."""
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/cow.jpg", photo_bytes(64, 48))
    keys = KeyLayout(settings.prefixes).for_input("inputs/cow.jpg")
    assert keys.output_name(keys.output_prefix + "toon-00.png") == "toon-00.png"
    for bad in ("outputs/cow/../x.png", "outputs/cow/sub/x.png", "outputs/cow/", "outputs/cow/..",
                "outputs/cow/a\\b.png", "outputs/cow/a\0.png", "inputs/cow.jpg", "outputs/cowx/toon-00.png"):
        assert keys.output_name(bad) is None, bad
    etag = store.head("inputs/cow.jpg").etag
    from processor.manifest import Variant

    variants = [Variant(key=k, style="toon", engine="toon", index=i, seed=i, width=8, height=8, sha256="0" * 64)
                for i, k in enumerate([keys.output_prefix + "toon-00.png", "outputs/cow/a\\b.png"])]
    store.put(keys.manifest, Manifest(source=Source(key="inputs/cow.jpg", etag=etag, size=1), variants=variants,
                                      worker=WorkerInfo(id="w", version="0", device="cpu")).to_json_bytes())
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    body = client.get(f"/v1/jobs/{job_id('cow.jpg')}").json()
    assert [v["index"] for v in body["variants"]] == [0]


def test_a_photo_the_store_will_not_let_us_read_still_has_a_state(tmp_path, settings: Settings) -> None:
    """A HEAD refused for one object (a policy, SSE-C) is that job's state from its listing, not
    a 503: queued, then failed with the worker's ``InputUnreadable`` record."""
    inner = LocalStore(tmp_path / "bucket")
    inner.put("inputs/locked.jpg", photo_bytes(96, 72))
    store = Hostile(inner, {"inputs/locked.jpg"}, set())
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    assert status(client, job_id("locked.jpg"))["status"] == "queued"
    run_worker(store, settings)
    failed = status(client, job_id("locked.jpg"))
    assert failed["status"] == "failed" and failed["failure"]["error"] == "InputUnreadable", failed

"""The API's pieces on the local store, in-process: progress published through the claim, job ids,
the webhook allow-list, ``Prefer: wait``, and the sidecar the overrides become."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from processor.api.problems import Problem
from processor.api.routes.jobs import prefer_wait
from processor.api.validate import build_submission, check_webhook, sidecar_mapping
from processor.config import load_settings
from processor.queue.claims import ClaimKeeper, ClaimManager, ClaimProgress
from processor.queue.jobs import JobStatus, UnknownJob, job_id, relpath_of
from processor.queue.keys import KeyLayout
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S


@pytest.fixture
def settings(tmp_path):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 2}}, run={"styles": ["toon"]},
                         claims={"ttl_s": 30, "renew_s": 10, "progress_s": 1})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_goes_out_with_the_next_early_renewal_and_the_api_reads_it(settings, tmp_path) -> None:
    clock = FakeClock()
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    state = queue.state(job)
    assert state.status is JobStatus.queued and state.progress is None
    keys = KeyLayout(settings.prefixes).for_input(state.input_key)
    manager = ClaimManager(store, "w1", ttl_s=30)
    claim = manager.acquire(keys.claim, keys.input, state.etag)
    claim.written_at = clock.now
    keeper = ClaimKeeper(manager, renew_s=10, progress_s=1, clock=clock)
    keeper.hold(claim)
    assert queue.state(job).status is JobStatus.running
    assert queue.state(job).progress == ClaimProgress("claimed")  # a claim without progress yet

    before = store.request_count()
    for step in range(1, 6):  # many steps between two keeper wake-ups: memory only
        claim.report(ClaimProgress("style:toon", round=2, rounds=4, step=step, steps=12))
    clock.now += 0.5
    keeper.renew_due()
    assert store.request_count() == before, "progress was written before claims.progress_s passed"
    clock.now += 0.6
    keeper.renew_due()
    assert store.request_count() == before + 1  # one PUT carries the latest step
    assert queue.state(job).progress == ClaimProgress("style:toon", round=2, rounds=4, step=5, steps=12)
    quiet = store.request_count()
    clock.now += 5
    keeper.renew_due()  # nothing new: no write until the renewal period
    assert store.request_count() == quiet
    clock.now += 5
    keeper.renew_due()
    assert store.request_count() == quiet + 1  # the plain renewal, every claims.renew_s


def test_an_expired_claim_is_not_running(settings, tmp_path) -> None:
    class Clock:
        now = datetime.now(timezone.utc)

        def __call__(self) -> datetime:
            return self.now

    server_clock = Clock()
    store = LocalStore(tmp_path / "bucket", clock=server_clock)
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    state = queue.state(job)
    keys = KeyLayout(settings.prefixes).for_input(state.input_key)
    ClaimManager(store, "w1", ttl_s=30).acquire(keys.claim, keys.input, state.etag)
    assert queue.state(job).status is JobStatus.running
    server_clock.now += timedelta(seconds=31)
    assert queue.state(job).status is JobStatus.queued


def test_the_submission_is_the_sidecar_the_worker_reads(settings, tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    fields = {"styles": ["toon"], "variants": "3", "seed": "5", "prompt": "a robot",
              "background_mode": "none"}
    submission = build_submission(photo_bytes(100, 80, fmt="PNG"), fields, settings, limit=10_000_000)
    assert submission.format == "PNG"
    assert submission.sidecar == {"styles": ["toon"], "variants": 3, "seed": 5, "prompt": "a robot",
                                  "background": {"mode": "none"}}
    job, _ = BucketQueue.for_settings(store, settings).submit(submission)
    relpath = relpath_of(job)
    assert relpath.startswith("api/") and relpath.endswith(".png")
    from processor.pipeline.sidecar import parse_sidecar

    sidecar_key = f"inputs/{relpath[:-len('.png')]}.json"
    parsed = parse_sidecar(store.get(sidecar_key).body, sidecar_key)
    assert (parsed.variants, parsed.seed, parsed.prompt, parsed.styles) == (3, 5, "a robot", ["toon"])


def test_styles_from_a_form_may_be_repeated_or_comma_separated() -> None:
    assert sidecar_mapping({"styles": ["toon, anime", "waterfall"]})["styles"] == ["toon", "anime", "waterfall"]
    assert sidecar_mapping({"styles": "toon"})["styles"] == ["toon"]
    assert sidecar_mapping({}) == {}


def test_a_style_override_that_does_not_fit_the_style_is_refused(settings) -> None:
    with pytest.raises(Problem) as caught:
        build_submission(photo_bytes(100, 80), {"background_mode": "generate", "background_prompt": "a beach"},
                         settings, limit=10_000_000)
    assert caught.value.status == 422 and "toon" in caught.value.detail


def test_job_ids_round_trip_and_anything_else_is_unknown() -> None:
    for relpath in ("api/1-ab.png", "toys/bär 1.jpg", "a/b/c.webp"):
        assert relpath_of(job_id(relpath)) == relpath
    for bad in ("", "!!", "a" * 3000, job_id("photo.json"), job_id("folder/")):
        with pytest.raises(UnknownJob):
            relpath_of(bad)


RESOLVED = {"hooks.example.com": ["93.184.216.34"], "inside.example.com": ["10.0.0.5"],
            "localhost": ["127.0.0.1"]}


@pytest.mark.parametrize(("url", "allow", "ok"), [
    ("https://hooks.example.com/x", ["hooks.example.com"], True),
    ("https://hooks.example.com/x", ["*.example.com"], True),
    ("https://example.com/x", ["*.example.com"], False),          # a wildcard names subdomains only
    ("https://evil.example.net/x", ["hooks.example.com"], False),
    ("https://inside.example.com/x", ["*.example.com"], False),   # resolves to a private address
    ("https://inside.example.com/x", ["inside.example.com"], True),  # ... unless named exactly
    ("http://127.0.0.1:9/x", ["*.example.com"], False),
    ("http://127.0.0.1:9/x", ["127.0.0.1"], True),
    ("http://localhost/x", ["*.localhost"], False),
    ("file:///etc/passwd", ["hooks.example.com"], False),
    ("https://user:pw@hooks.example.com/x", ["hooks.example.com"], False),
])
def test_webhook_allow_list(url: str, allow: list[str], ok: bool) -> None:
    resolve = RESOLVED.__getitem__
    if ok:
        assert check_webhook(url, allow, resolve) == url
    else:
        with pytest.raises(Problem) as caught:
            check_webhook(url, allow, resolve)
        assert caught.value.status == 422 and caught.value.field == "webhook"


def test_prefer_wait() -> None:
    assert prefer_wait(None, 60) == 0
    assert prefer_wait("wait=5", 60) == 5
    assert prefer_wait("respond-async, wait=100", 60) == 60  # capped at api.max_wait_s
    assert prefer_wait("return=minimal", 60) == 0
    with pytest.raises(Problem):
        prefer_wait("wait=soon", 60)


def test_api_secret_variables_are_not_read_as_settings(monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_API_KEYS", "secret-1,secret-2")
    monkeypatch.setenv("PROCESSOR_WEBHOOK_SECRET", "whsec_abc")
    settings = load_settings(None)
    assert "secret-1" not in json.dumps(settings.model_dump(mode="json"))


def test_cors_answers_only_the_configured_origins(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from processor.api.app import create_app

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                             api={"cors_origins": ["https://toys.example.com"]})
    client = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=["k"]))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = client.options("/v1/jobs", headers={"Origin": "https://toys.example.com"} | preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://toys.example.com"
    refused = client.options("/v1/jobs", headers={"Origin": "https://evil.example.net"} | preflight)
    assert "access-control-allow-origin" not in refused.headers


def test_a_failed_write_leaves_no_idempotency_record_behind(settings, tmp_path) -> None:
    from processor.errors import TransientStoreError

    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    real_put = store.put

    def failing_put(key, body, **kwargs):
        if key.startswith("inputs/"):
            raise TransientStoreError("the store went away", key=key)
        return real_put(key, body, **kwargs)

    store.put = failing_put
    submission = Submission(image=photo_bytes(100, 80), format="JPEG")
    with pytest.raises(TransientStoreError):
        queue.submit(submission, idempotency_key="k1")
    store.put = real_put
    job, created = queue.submit(submission, idempotency_key="k1")  # the client's retry: a real job now
    assert created and queue.state(job).status is JobStatus.queued


def test_lost_create_responses_still_write_the_whole_job(settings, tmp_path) -> None:
    """Every create-if-absent of a submit lands but its response is lost, and the store's retry meets
    the object (412): the job is still written whole, under the id the client gets, and a repeat
    with the same idempotency key still answers that job."""
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    real_put = store.put
    lost: list[str] = []

    def put_twice(key, body, **kwargs):
        if kwargs.get("if_none_match"):
            real_put(key, body, **kwargs)  # lands; its answer never arrives
            lost.append(key)
        return real_put(key, body, **kwargs)  # the retry: 412

    store.put = put_twice
    submission = Submission(image=photo_bytes(100, 80), format="JPEG", style_image=photo_bytes(64, 64),
                            style_image_format="JPEG")
    job, created = queue.submit(submission, idempotency_key="k1")
    assert created and any(k.startswith("inputs/") for k in lost) and any(k.startswith("styles/") for k in lost)
    assert queue.state(job).status is JobStatus.queued
    again, created_again = queue.submit(submission, idempotency_key="k1")
    assert (again, created_again) == (job, False)
    plain, _ = queue.submit(Submission(image=photo_bytes(90, 70), format="JPEG"))
    assert queue.state(plain).status is JobStatus.queued


def test_an_api_without_keys_is_open_and_says_so(tmp_path, caplog) -> None:
    from fastapi.testclient import TestClient

    from processor.api.app import create_app, read_keys

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")})
    assert read_keys(settings, {"PROCESSOR_API_KEYS": " a, ,b "}) == ["a", "b"]
    assert read_keys(settings, {}) == []
    with caplog.at_level("WARNING", logger="processor.api"):
        client = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=[]),
                            base_url=OPEN_BASE_URL)
    assert any(r.message == "api_open" for r in caplog.records)
    assert client.get("/v1/jobs").status_code == 200


def test_a_running_worker_publishes_its_progress_where_the_api_reads_it(tmp_path) -> None:
    """The whole chain in one process: a style reports a step, the worker hands it to the claim,
    the keeper writes it within claims.progress_s, and BucketQueue.state shows it as running."""
    import threading
    import time

    from processor.pipeline.render import EngineRegistry
    from processor.pipeline.toon import ToonEngine
    from processor.worker.runner import Worker

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                             styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                             run={"styles": ["toon"]}, claims={"ttl_s": 30, "renew_s": 10, "progress_s": 0.1})
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(96, 72), format="JPEG"))
    release = threading.Event()

    class SlowStyle(ToonEngine):
        def __call__(self, image, context=None):
            context.progress("style:toon", round=2, rounds=3, step=4, steps=10)
            assert release.wait(30)
            return super().__call__(image, context)

    registry = EngineRegistry(settings.styles, lambda name, style: SlowStyle(name, style))
    worker = Worker(store, settings, registry, worker_id="w1")
    worker.setup()
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wanted = ClaimProgress("style:toon", round=2, rounds=3, step=4, steps=10)
        deadline = time.monotonic() + HANG_GUARD_S
        while (state := queue.state(job)).progress != wanted:
            assert time.monotonic() < deadline, f"never saw the progress; last: {state}"
            time.sleep(0.05)
        assert state.status is JobStatus.running
    finally:
        release.set()
        thread.join(timeout=HANG_GUARD_S)
    assert queue.state(job).status is JobStatus.done


def test_a_manifest_naming_keys_outside_its_folder_gets_no_urls_for_them(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from processor.api.app import create_app
    from processor.manifest import Manifest, Source, Variant, WorkerInfo

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")})
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    state = queue.state(job)
    keys = KeyLayout(settings.prefixes).for_input(state.input_key)
    store.put("inputs/someone-elses.jpg", photo_bytes(90, 60))

    def variant(key: str, index: int) -> Variant:
        return Variant(key=key, style="toon", engine="toon", index=index, seed=index, width=10, height=10, sha256="0")

    manifest = Manifest(
        source=Source(key=state.input_key, etag=state.etag, size=1),
        variants=[
            variant(keys.output_prefix + "toon-00.png", 0),
            variant("inputs/someone-elses.jpg", 1),
            variant(keys.output_prefix + "../x.png", 2),
        ],
        worker=WorkerInfo(id="w", version="0", device="cpu"),
    )
    store.put(keys.manifest, manifest.to_json_bytes())
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    body = client.get(f"/v1/jobs/{job}").json()
    assert body["status"] == "done"
    assert [v["index"] for v in body["variants"]] == [0]
    assert body["variants"][0]["url"].endswith(f"/v1/jobs/{job}/files/toon-00.png")


def test_form_edge_cases_are_named(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from processor.api.app import create_app

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")})
    client = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=[]), base_url=OPEN_BASE_URL)
    empty = client.post("/v1/jobs", files={"image": ("e.jpg", b"")})
    assert empty.status_code == 415 and "empty" in empty.json()["detail"]
    photo = photo_bytes(80, 60)
    two = client.post("/v1/jobs", files=[("image", ("a.jpg", photo)), ("image", ("b.jpg", photo))])
    assert two.status_code == 422 and two.json()["field"] == "image"
    no_image = client.post("/v1/jobs", files={"variants": (None, "2")})
    assert no_image.status_code == 422 and no_image.json()["field"] == "image"
    long_prompt = client.post("/v1/jobs", files={"image": ("a.jpg", photo)}, data={"prompt": "x" * 20_000})
    assert long_prompt.status_code == 413 and long_prompt.json()["field"] == "prompt"
    assert not (tmp_path / "bucket" / "inputs").exists()  # nothing written for any of them


def test_files_stream_from_the_local_store_in_chunks(tmp_path, monkeypatch) -> None:
    """A file the API serves from the local store is relayed chunk by chunk (never read whole),
    with its ETag and length; the bytes are the stored ones."""
    from fastapi.testclient import TestClient

    from processor.api.app import create_app
    from processor.store import local as local_store

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")})
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    keys = KeyLayout(settings.prefixes).for_input(queue.state(job).input_key)
    body = bytes(range(256)) * 4096  # 1 MiB
    info = store.put(keys.output_prefix + "toon-00.png", body)
    chunks: list[int] = []
    real_stream = LocalStore.stream

    def spy(self, key, *, chunk_bytes=local_store.STREAM_CHUNK_BYTES):
        found, parts = real_stream(self, key, chunk_bytes=64 * 1024)
        return found, (chunks.append(len(part)) or part for part in parts)

    def no_whole_reads(self, key, *, max_bytes=None):
        raise AssertionError(f"{key} was read whole")

    monkeypatch.setattr(LocalStore, "stream", spy)
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    monkeypatch.setattr(LocalStore, "get", no_whole_reads)
    got = client.get(f"/v1/jobs/{job}/files/toon-00.png")
    assert got.status_code == 200 and got.content == body
    assert got.headers["etag"] == f'"{info.etag}"' and got.headers["content-length"] == str(len(body))
    assert len(chunks) == 16 and max(chunks) == 64 * 1024
    assert client.get(f"/v1/jobs/{job}/files/nothing.png").status_code == 404

"""Idempotency-Key under races and crashes (``processor.queue.idempotency``).

- Concurrent requests with one key, from threads against the real API (uvicorn in this process,
  over a store whose photo writes are slowed to widen the window), on the local store and
  SeaweedFS: every answer is the same job, never a 404, and one input is written.
- A crash between the key's record and the photo: repeats are told to come back (409 with
  Retry-After) while the writer may still be at work, then take the key over and write the job.
- A writer that stalled past the takeover gives its job up: the key answers one job only.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.config import Settings, load_settings
from processor.queue.jobs import JobStatus, job_id
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from testkit.api_service import running
from testkit.images import photo_bytes

TOKEN = "alice-token"
KEYS = [f"alice:{TOKEN}"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Requests sent at once with one key.
RACERS = 6
#: Seconds each photo write is held back: the first request is still writing when the others come.
WRITE_DELAY_S = 0.5
PHOTO = photo_bytes(96, 72, seed=3)


class SlowPhotos:
    """The store the API sees: the real one, with every write under ``inputs/`` held back."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, body: bytes, **kwargs: Any) -> Any:
        if key.startswith("inputs/") and not key.endswith(".json"):
            time.sleep(self.delay_s)
        return self.inner.put(key, body, **kwargs)


class ServerClock:
    """The local store's clock (its ``server_time``), moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class Ticks:
    """A monotonic clock that moves a second a reading: the API's waits end after a few polls."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    return request.getfixturevalue("s3_store")


def make_settings(tmp_path, **api: object) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1}}, run={"styles": ["toon"]},
                         api={"poll_s": 0.05, **api})


def inputs(store: Any) -> list[str]:
    return [o.key for o in store.list("inputs/") if not o.key.endswith(".json")]


def test_concurrent_requests_with_one_key_all_get_the_first_job(tmp_path, store: Any) -> None:
    app = create_app(make_settings(tmp_path), SlowPhotos(store, WRITE_DELAY_S), keys=KEYS)
    start = threading.Barrier(RACERS)
    answers: list[httpx.Response] = []
    with running(app) as url:

        def send() -> None:
            start.wait()
            answers.append(httpx.post(url + "/v1/jobs", files={"image": ("t.jpg", PHOTO)}, timeout=60,
                                      headers=AUTH | {"Idempotency-Key": "order-4711"}))

        threads = [threading.Thread(target=send) for _ in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(answers) == RACERS
        assert [a.status_code for a in answers] == [202] * RACERS, [a.text for a in answers]
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1, ids
        (job,) = ids
        assert httpx.get(f"{url}/v1/jobs/{job}", headers=AUTH, timeout=30).json()["status"] == "queued"
    assert len(inputs(store)) == 1


def test_a_key_whose_writer_died_is_taken_over_by_a_repeat(tmp_path) -> None:
    clock = ServerClock()
    store = LocalStore(tmp_path / "bucket", clock=clock)
    settings = make_settings(tmp_path)
    queue = BucketQueue.for_settings(store, settings)
    record = queue.idempotency.key_for("alice", "order-9")
    dead = job_id("api/alice/0000000000001-00000000deadbeef.jpg")
    # The first request wrote the key's record, then its replica died: no photo, ever.
    assert queue.idempotency.reserve(record, dead, Submission(PHOTO, "JPEG").fingerprint(),
                                     exists=lambda job: False) is None
    client = TestClient(create_app(settings, store, keys=KEYS, clock=Ticks()), headers=AUTH)
    send = lambda: client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO)},  # noqa: E731
                               headers={"Idempotency-Key": "order-9"})
    # Within the takeover window the writer may still be at work: come back later, not "no job".
    pending = send()
    assert pending.status_code == 409 and pending.json()["field"] == "Idempotency-Key", pending.text
    assert pending.headers["retry-after"].isdigit() and pending.json()["job"] == dead
    assert inputs(store) == []
    clock.now += timedelta(seconds=settings.api.idempotency_takeover_s + 1)
    taken = send()
    assert taken.status_code == 202, taken.text
    job = taken.json()["id"]
    assert job != dead and client.get(f"/v1/jobs/{job}").json()["status"] == "queued"
    assert send().json()["id"] == job and len(inputs(store)) == 1


def test_a_dead_writers_key_is_recovered_on_seaweedfs(tmp_path, s3_store: Any) -> None:
    settings = make_settings(tmp_path, idempotency_takeover_s=1)
    queue = BucketQueue.for_settings(s3_store, settings)
    record = queue.idempotency.key_for("alice", "order-10")
    dead = job_id("api/alice/0000000000002-00000000deadbeef.jpg")
    assert queue.idempotency.reserve(record, dead, Submission(PHOTO, "JPEG").fingerprint(),
                                     exists=lambda job: False) is None
    time.sleep(2.2)  # the server's clock, in whole seconds, passes the takeover
    client = TestClient(create_app(settings, s3_store, keys=KEYS), headers=AUTH)
    first = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO)}, headers={"Idempotency-Key": "order-10"})
    assert first.status_code == 202 and first.json()["id"] != dead, first.text
    again = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO)}, headers={"Idempotency-Key": "order-10"})
    assert again.json()["id"] == first.json()["id"] and len(inputs(s3_store)) == 1


def test_a_writer_that_stalled_past_the_takeover_gives_its_job_up(tmp_path) -> None:
    clock = ServerClock()
    store = LocalStore(tmp_path / "bucket", clock=clock)
    settings = make_settings(tmp_path)
    queue = BucketQueue.for_settings(store, settings)
    submission = Submission(PHOTO, "JPEG")
    real_put = store.put
    taker: list[tuple[str, bool]] = []
    stalled_once = threading.Event()

    def stalling_put(key: str, body: bytes, **kwargs: Any) -> Any:
        if key.startswith("inputs/") and not stalled_once.is_set():
            # The first writer stalls before its photo; meanwhile the takeover passes and a
            # repeat (another replica) takes the key over and writes its own job.
            stalled_once.set()
            clock.now += timedelta(seconds=settings.api.idempotency_takeover_s + 1)
            taker.append(BucketQueue.for_settings(store, settings).submit(submission, idempotency_key="k",
                                                                          scope="alice", owner="alice"))
        return real_put(key, body, **kwargs)

    store.put = stalling_put  # type: ignore[method-assign]
    stalled = queue.submit(submission, idempotency_key="k", scope="alice", owner="alice")
    (taken,) = taker
    assert taken[1] and stalled == (taken[0], False)
    assert inputs(store) == [queue.input_key_of(taken[0])]  # the stalled writer's photo is gone
    assert queue.state(taken[0]).status is JobStatus.queued


def test_the_same_key_with_another_request_is_still_a_conflict(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    client = TestClient(create_app(make_settings(tmp_path), store, keys=KEYS), headers=AUTH)
    first = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO)}, headers={"Idempotency-Key": "x"})
    other = client.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(96, 72, seed=4))},
                        headers={"Idempotency-Key": "x"})
    assert first.status_code == 202 and other.status_code == 422 and other.json()["job"] == first.json()["id"]

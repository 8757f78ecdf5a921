"""``DELETE /v1/jobs/{id}`` through a real worker (toon, with engines that take steps, so a job
stays running long enough to cancel), on the local store and on SeaweedFS: a queued job is removed
before any worker takes it, a running one stops at its next step and records ``cancelled``, a done
one is a 409, another client's a 404; ``processor status`` counts it and the worker goes on."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.cli.main import main as cli_main
from processor.client import ApiError, Client
from processor.config import Settings, load_settings
from processor.queue.protocol import BucketQueue
from processor.store.local import LocalStore
from processor.worker.daemon import run_daemon
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from testkit.stepping import stepping_registry
from testkit.waits import HANG_GUARD_S, wait_until

#: Steps the first job would take: far more than any wait in these tests, so it is still running
#: whenever the test cancels it (each step is ``STEP_S``).
ENDLESS_STEPS = 100_000
STEP_S = 0.02
IP_ADAPTER = {"model": "h94/IP-Adapter"}
KEYS = ["alice:token-a", "bob:token-b", "root:token-root:admin"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         # "look" takes a picture of the look (never rendered here: its job is cancelled queued).
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64},
                                 "look": {"engine": "img2img", "model": "m", "ip_adapter": IP_ADAPTER}},
                         run={"styles": ["toon"], "poll_interval_s": 0.05, "idle_backoff_max_s": 0.2},
                         pipeline={"contact_sheet_height": 32},
                         claims={"ttl_s": 30, "renew_s": 5, "progress_s": 0.1}, api={"poll_s": 0.05})


@pytest.fixture
def api(settings: Settings, store: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store, keys=KEYS), base_url=OPEN_BASE_URL) as http:
        yield http


class Running:
    """A worker daemon on a thread of this process, with stepping engines."""

    def __init__(self, store: Any, settings: Settings, steps: int) -> None:
        registry, self.stepping = stepping_registry(settings, steps, STEP_S)
        self.worker = Worker(store, settings, registry, worker_id="w-cancel")
        self.worker.setup()
        self.thread = threading.Thread(target=run_daemon, args=(self.worker,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=HANG_GUARD_S)
        assert not self.thread.is_alive(), "the worker did not stop"


def outputs(store: Any) -> list[str]:
    return [o.key for o in store.list("outputs/")]


def test_a_running_job_stops_at_its_next_step_and_records_cancelled(api, store, settings) -> None:
    with Running(store, settings, ENDLESS_STEPS) as running, Client(http=api, token="token-a") as alice:
        job = alice.submit(photo_bytes(96, 72, seed=1), variants=1).id
        # Running, and past its first steps: the worker is inside the engine's loop.
        wait_until(lambda: (s := alice.get(job)).status.value == "running" and s.progress is not None
                   and (s.progress.step or 0) >= 2, "the job running its steps")
        with Client(http=api, token="token-b") as bob, pytest.raises(ApiError) as other:
            bob.cancel(job)
        assert other.value.status == 404  # another client's job is no job of theirs
        asked = alice.cancel(job)
        assert asked.status.value in ("running", "cancelled")
        done = alice.wait(job, timeout_s=HANG_GUARD_S)
        assert done.status.value == "cancelled" and done.manifest is None and done.variants == []
        assert done.cancel is not None and done.cancel.stage == "style:toon"
        assert done.cancel.steps == ENDLESS_STEPS and 2 <= (done.cancel.step or 0) < ENDLESS_STEPS
        reached = running.stepping.reached
        assert reached < ENDLESS_STEPS
        assert outputs(store) == []  # nothing was uploaded, no manifest committed
        # The record in the bucket, with the worker that stopped it; the scan counts it as ended.
        state = BucketQueue.for_settings(store, settings).state(job)
        assert state.cancel is not None and state.cancel.worker is not None
        assert state.cancel.worker.id == "w-cancel" and state.cancel.requested_by == "alice"
        status = BucketQueue.for_settings(store, settings).status()
        assert (status.cancelled, status.pending, status.in_progress) == (1, 0, 0)
        # Stopped for good: the engine took no step after the worker saw the request.
        wait_until(lambda: alice.get(job).status.value == "cancelled", "the job staying cancelled")
        assert running.stepping.reached <= reached + 1
        # A repeat of the cancel answers the cancelled job; the worker goes on with the next one.
        assert alice.cancel(job).status.value == "cancelled"
        running.stepping.steps = 1
        after = alice.submit(photo_bytes(96, 72, seed=2), variants=1).id
        assert alice.wait(after, timeout_s=HANG_GUARD_S).status.value == "done"
        with pytest.raises(ApiError) as ended:
            alice.cancel(after)
        assert ended.value.status == 409 and ended.value.problem.field == "id"
        assert "only a queued or running job" in ended.value.problem.detail


def test_a_queued_job_is_removed_before_any_worker_takes_it(api, store, settings) -> None:
    with Client(http=api, token="token-a") as alice:
        job = alice.submit(photo_bytes(96, 72, seed=3), styles=["look"], style_image=photo_bytes(40, 40, seed=4),
                           idempotency_key="order-1").id
        state = BucketQueue.for_settings(store, settings).state(job)
        before = {o.key for o in store.list("")}
        assert state.input_key in before and any(k.startswith(settings.prefixes.styles) for k in before)
        cancelled = alice.cancel(job)
        assert cancelled.status.value == "cancelled" and cancelled.cancel is not None
        assert cancelled.cancel.stage == "queued"
        left = {o.key for o in store.list("")}
        # The photo, its sidecar and its picture of the look are gone.
        assert state.input_key not in left and not any(k.startswith("inputs/") for k in left)
        assert not any(k.startswith(settings.prefixes.styles) for k in left)
        # The job still answers, and so does a repeat of its Idempotency-Key.
        assert alice.get(job).status.value == "cancelled"
        again = alice.submit(photo_bytes(96, 72, seed=3), styles=["look"], style_image=photo_bytes(40, 40, seed=4),
                             idempotency_key="order-1")
        assert again.id == job and again.status.value == "cancelled"
    # No scan finds it, and a worker draining the bucket renders nothing.
    assert BucketQueue.for_settings(store, settings).scan().pending == []
    registry, stepping = stepping_registry(settings, 1, STEP_S)
    worker = Worker(store, settings, registry, worker_id="w-drain")
    worker.setup()
    assert worker.run_once() == 0
    assert stepping.reached == 0 and outputs(store) == []


def test_processor_status_shows_the_cancelled_job(api, store, settings, tmp_path: Path) -> None:
    if not isinstance(store, LocalStore):
        pytest.skip("the command reads its store from the config: the local store's is enough")
    root = Client(http=api, token="token-root")
    with Running(store, settings, ENDLESS_STEPS):
        job = root.submit(photo_bytes(96, 72, seed=5), variants=1).id
        wait_until(lambda: (s := root.get(job)).progress is not None and s.progress.step, "the job running")
        root.cancel(job)
        assert root.wait(job, timeout_s=HANG_GUARD_S).status.value == "cancelled"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"store": {"kind": "local", "root": str(store.root)}}))
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert cli_main(["status", "--config", str(config), "--json"]) == 0
    counts = json.loads(printed.getvalue())
    assert (counts["cancelled"], counts["inputs"], counts["pending"], counts["done"]) == (1, 1, 0, 0)
    # `processor results` says how it ended instead of "no results yet".
    told = io.StringIO()
    with redirect_stderr(told):
        assert cli_main(["results", "--config", str(config), "--out", str(tmp_path / "out"), root.get(job).input]) == 1
    assert "was cancelled at style:toon, step" in told.getvalue()

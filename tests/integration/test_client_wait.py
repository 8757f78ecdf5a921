"""``Client.wait`` passes on the job's progress (``on_progress``) while it waits, following the
event stream and by polling alike: a worker daemon on a thread with engines that take steps, the
API in-process (FastAPI's TestClient) over a local bucket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.api.schemas import Progress
from processor.client import Client
from processor.config import Settings, load_settings
from processor.store.local import LocalStore
from processor.worker.daemon import run_daemon
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from testkit.stepping import stepping_registry
from testkit.waits import HANG_GUARD_S

#: Steps each job takes, ``STEP_S`` apart: long enough (about a second) for several progress reads.
STEPS = 25
STEP_S = 0.04
TOKEN = "token-a"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"], "poll_interval_s": 0.05, "idle_backoff_max_s": 0.2},
                         pipeline={"contact_sheet_height": 32},
                         claims={"ttl_s": 30, "renew_s": 5, "progress_s": 0.05}, api={"poll_s": 0.05})


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[Client]:
    store = LocalStore(tmp_path / "bucket")
    registry, _ = stepping_registry(settings, STEPS, STEP_S)
    daemon = Worker(store, settings, registry, worker_id="w-wait")
    daemon.setup()
    thread = threading.Thread(target=run_daemon, args=(daemon,), daemon=True)
    thread.start()
    try:
        with TestClient(create_app(settings, store, keys=[f"alice:{TOKEN}"]), base_url=OPEN_BASE_URL) as http, \
                Client(http=http, token=TOKEN, poll_s=0.05) as client:
            yield client
    finally:
        daemon.request_stop()
        thread.join(timeout=HANG_GUARD_S)
        assert not thread.is_alive(), "the worker did not stop"


@pytest.mark.parametrize("stream", [True, False], ids=["events", "polling"])
def test_wait_reports_the_steps_of_the_job_on_the_way_to_its_end(api: Client, stream: bool) -> None:
    job = api.submit(photo_bytes(96, 72, seed=1), variants=1).id
    seen: list[Progress] = []
    done = api.wait(job, timeout_s=HANG_GUARD_S, stream=stream, on_progress=seen.append)
    assert done.status.value == "done" and len(done.variants) == 1
    steps = [p for p in seen if p.stage == "style:toon" and p.steps == STEPS]
    assert steps, [p.model_dump(exclude_none=True) for p in seen]
    assert all(0 <= (p.step or 0) <= STEPS for p in steps)

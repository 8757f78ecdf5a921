"""The workers' capabilities records end to end: a real ``processor serve`` and real ``processor
run`` daemons on the local store. The server's configuration has a style (``disney``) whose model
folder is missing: a worker whose install cannot run it, simulated. The API offers only what a
live worker can run, says when none runs, and a job that asks for the missing style waits, with
the operator's reason, until a worker that can run it takes it."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from processor.config import load_settings
from processor.manifest import FailureRecord
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.api_service import Service, serve, stop, wait_status, worker, write_env
from testkit.images import photo_bytes
from testkit.waits import wait_until


def unavailable_style(tmp: Path) -> dict[str, object]:
    """An img2img style whose model folder does not exist: no worker of this test can load it."""
    return {"disney": {"engine": "img2img", "model": str(tmp / "no-such-model"), "variants": 1}}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store_env = {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp_path / "bucket")}
    # The prototype's route renders the style no worker can load.
    env = write_env(tmp_path, store_env, styles=unavailable_style(tmp_path), api={"direct_style": "disney"})
    with serve(env, tmp_path) as api:
        yield api


def styles_of(client: httpx.Client) -> dict[str, dict]:
    return {s["name"]: s for s in client.get("/v1/styles").json()["styles"]}


def test_the_api_offers_what_live_workers_run_and_jobs_wait_for_a_capable_one(service: Service,
                                                                              tmp_path: Path) -> None:
    with service.client() as client:
        # No worker yet: ready (API and workers scale apart), with the warning; every style offered.
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["workers"] == {"live": 0, "ready": 0}
        assert ready.json()["warning"] == "no worker is running: jobs will wait until one starts"
        listed = client.get("/v1/styles").json()
        assert listed["workers"] == 0 and listed["warning"].startswith("no worker is running")
        assert all(s["offered"] for s in listed["styles"])
        assert "No worker is running: jobs will wait" in client.get("/").text

        with worker(service.env, tmp_path) as daemon:
            # Once its record is live, only what it can run is offered; the rest says why.
            styles = wait_until(lambda: (s := styles_of(client))["toon"]["workers"] and s,
                                "the worker's capabilities record", timeout_s=120)
            assert styles["toon"]["offered"] and styles["toon"]["default"]
            disney = styles["disney"]
            assert not disney["offered"] and disney["workers"] == []
            assert disney["reason"].startswith("no running worker can load it: ")
            assert "no-such-model" in disney["reason"] and "no model_index.json" in disney["reason"]
            ready = wait_until(lambda: (r := client.get("/readyz").json())["workers"]["ready"] == 1 and r,
                               "a ready worker in readyz")
            assert "warning" not in ready
            (listed_worker,) = client.get("/v1/workers").json()["workers"]
            assert listed_worker["phase"] == "ready" and listed_worker["run_styles"] == ["toon"]
            assert listed_worker["device"] and listed_worker["version"] and listed_worker["last_seen_s"] >= 0
            assert {s["name"]: s["state"] for s in listed_worker["styles"]} == {"toon": "ready",
                                                                                "disney": "unavailable"}
            page = client.get("/").text
            assert 'data-role="unavailable-style"' in page and "Greyed out: <strong>disney</strong>" in page
            assert "No worker is running" not in page

            # A job that names the style anyway is accepted and waits, with the operator's reason.
            job = client.post("/v1/jobs", files={"image": ("bear.jpg", photo_bytes(120, 90, seed=3))},
                              data={"styles": "disney"}).json()["id"]
            waiting = wait_until(lambda: (b := client.get(f"/v1/jobs/{job}").json())["waiting"] and b,
                                 "the job to wait for a capable worker")
            assert waiting["status"] == "queued" and waiting["failure"] is None
            assert waiting["waiting"]["error"] == "StyleUnavailable" and not waiting["waiting"]["permanent"]
            assert "style 'disney' cannot run on this worker" in waiting["waiting"]["message"]
            assert waiting["waiting"]["hint"].startswith("Operator:")
            assert waiting["links"]["retry"], waiting  # retryable once a worker can
            # The prototype's route does not wait out its timeout: 503, with the operator's reason.
            direct = client.post("/generate_image_rest_direct", json={
                "initial_image": base64.b64encode(photo_bytes(120, 90, seed=4)).decode()})
            assert direct.status_code == 503, direct.text
            assert direct.json()["detail"].startswith("StyleUnavailable: style 'disney' cannot run on this worker")
            assert direct.json()["hint"].startswith("Operator:")
            # `processor retry --error StyleUnavailable` selects it (running workers rescan at once).
            subprocess.run([sys.executable, "-m", "processor", "retry", "--error", "StyleUnavailable"],
                           env=service.env, capture_output=True, check=True)
            store = LocalStore(service.env["PROCESSOR_STORE__ROOT"])
            record_key = KeyLayout(load_settings(service.env["PROCESSOR_CONFIG"]).prefixes).for_input(
                waiting["input"]).failure
            assert FailureRecord.model_validate_json(store.get(record_key).body).requeued_at is not None
            # Its worker's record now carries the load failure in the engine's own words.
            def disney_reason() -> str:
                (record,) = client.get("/v1/workers").json()["workers"]
                return next(s["reason"] for s in record["styles"] if s["name"] == "disney") or ""

            wait_until(lambda: "style 'disney' cannot run on this worker" in disney_reason(),
                       "the load failure in the worker's record", timeout_s=60)
        assert daemon.returncode == 0
        # A clean exit removes its record: none live again.
        wait_until(lambda: client.get("/readyz").json()["workers"]["live"] == 0, "the record removed")

        # A worker that can run it (there, 'disney' is a toon style) takes the waiting job.
        capable_env = write_env(tmp_path, {k: v for k, v in service.env.items() if k.startswith("PROCESSOR_STORE")},
                                styles={"disney": {"engine": "toon", "variants": 1, "max_side": 96}},
                                config_name="capable.yaml")
        capable = subprocess.Popen([sys.executable, "-m", "processor", "run", "--metrics-port", "0"],
                                   env=capable_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            done = wait_status(client, job, {"done", "failed"})
            assert done["status"] == "done" and done["waiting"] is None, done
            assert [v["style"] for v in done["variants"]] == ["disney"]
            assert wait_until(lambda: styles_of(client)["disney"]["offered"], "disney offered")
        finally:
            stop(capable)

"""How fast an idle daemon learns about new work, and what its waiting costs.

A real ``processor serve`` and a real ``processor run`` daemon (subprocesses) over one local
bucket, with the shipped ``run`` settings (only the style is the tiny ``toon`` one). After the
daemon's first scan, the benchmark leaves it idle for ``--idle-s`` seconds, then:

1. submits a photo through ``POST /v1/jobs`` and times it to ``running`` and to ``done``
   (``GET /v1/jobs/{id}`` every ``--poll-ms``); ``api_submit_to_done_less_compute_s`` subtracts
   the manifest's own compute timings;
2. leaves it idle again, drops a photo into the bucket's ``inputs/`` folder (a plain file, as a
   user copying one in) and times it to ``running``.

``idle_requests_per_hour`` is the daemon's store requests (its ``processor_store_requests``
counter) during the first idle period, per hour. ``--hints`` sets ``run.hints`` (default: the
shipped default); ``--hints none`` measures polling alone.

    python -m bench.wake --idle-s 90
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, report
from processor.queue.jobs import job_id
from testkit.api_service import TOKEN, serve, stop
from testkit.images import photo_bytes

DEFAULT_IDLE_S = 90.0
#: Milliseconds between the benchmark's status reads.
DEFAULT_POLL_MS = 50
#: Seconds a pickup may take before the benchmark gives up (the shipped back-off cap, 30 s, is well
#: below it; a test's per-test timeout is above it, so a pickup that never comes fails with its body).
PICKUP_TIMEOUT_S = 120.0
#: The shipped settings but the style: a tiny toon.
CONFIG = """\
styles: {toon: {engine: toon, variants: 1, max_side: 96}}
run: {styles: [toon]%(run)s}
"""


def _write_config(tmp: Path, hints: str | None) -> dict[str, str]:
    run = "" if hints is None else f", hints: [{hints}]" if hints != "none" else ", hints: []"
    config = tmp / "config.yaml"
    config.write_text(CONFIG % {"run": run})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    # An admin's key: a dropped-in photo lives outside every client's own folder of inputs/.
    return env | {"PROCESSOR_CONFIG": str(config), "PROCESSOR_API_KEYS": f"bench:{TOKEN}:admin",
                  "PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")}


@contextmanager
def _daemon(env: dict[str, str], tmp: Path) -> Iterator[Path]:
    """A ``processor run`` daemon on the default metrics port (a free one when that is taken); its log."""
    log = tmp / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "processor", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        stop(proc)


def _metrics_url(log: Path, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r'"metrics_port": (\d+)', log.read_text(errors="replace"))
        if found:
            return f"http://127.0.0.1:{found.group(1)}/metrics"
        time.sleep(0.05)
    raise AssertionError(f"the worker printed no metrics port:\n{log.read_text()[-3000:]}")


def _store_requests(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    found = re.search(r"^processor_store_requests_total (\S+)$", text, re.M)
    assert found, "no processor_store_requests_total in /metrics"
    return float(found.group(1))


def _wait_first_scan(log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while '"scanned"' not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the worker never scanned:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _until(client: httpx.Client, job: str, wanted: set[str], started: float, poll_s: float) -> tuple[float, dict]:
    """Seconds from ``started`` until the job's status is in ``wanted``, and the last body read."""
    while True:
        resp = client.get(f"/v1/jobs/{job}")
        # 404 until the job exists; anything else is the benchmark's mistake (a dropped-in photo
        # lives outside every client's own folder: only an admin's key sees it).
        assert resp.status_code in (200, 404), f"GET /v1/jobs/{job}: {resp.status_code} {resp.text}"
        body = resp.json() if resp.status_code == 200 else {"status": "unknown"}
        if body["status"] in wanted:
            return time.perf_counter() - started, body
        if body["status"] == "failed":
            raise AssertionError(f"job {job} failed: {body}")
        assert time.perf_counter() - started < PICKUP_TIMEOUT_S, f"job {job} stayed {body['status']}"
        time.sleep(poll_s)


def _compute_s(body: dict) -> float:
    """The seconds the worker spent on the job's pixels: its manifest's timings, the download and
    the upload excluded."""
    return sum(v for k, v in body["manifest"]["timings"].items() if k not in ("download", "upload"))


def measure(tmp: Path, idle_s: float, poll_s: float, hints: str | None) -> dict[str, Any]:
    env = _write_config(tmp, hints)
    results: dict[str, Any] = {"idle_s": idle_s, "hints": hints or "default"}
    with serve(env, tmp) as api, _daemon(env, tmp) as log, api.client() as client:
        metrics_url = _metrics_url(log)
        _wait_first_scan(log)
        before = _store_requests(metrics_url)
        time.sleep(idle_s)
        results["idle_requests_per_hour"] = (_store_requests(metrics_url) - before) * 3600 / idle_s

        started = time.perf_counter()
        resp = client.post("/v1/jobs", files={"image": ("toy.jpg", photo_bytes(160, 120))})
        assert resp.status_code == 202, resp.text
        job = resp.json()["id"]
        results["api_submit_to_running_s"], _ = _until(client, job, {"running", "done"}, started, poll_s)
        results["api_submit_to_done_s"], body = _until(client, job, {"done"}, started, poll_s)
        results["api_submit_to_done_less_compute_s"] = results["api_submit_to_done_s"] - _compute_s(body)

        time.sleep(idle_s)
        relpath = "drop-in.jpg"
        target = tmp / "bucket" / "inputs" / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        target.write_bytes(photo_bytes(160, 120, seed=7))
        results["drop_in_to_running_s"], _ = _until(client, job_id(relpath), {"running", "done"}, started, poll_s)
        results["drop_in_to_done_s"], _ = _until(client, job_id(relpath), {"done"}, started, poll_s)
        results["worker_events"] = _event_counts(log)
    return results


def _event_counts(log: Path) -> str:
    """How many scans of each kind the daemon logged (full / incremental), for the report."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "scanned":
            kind = "full" if event.get("full") else "incremental"
            counts[kind] = counts.get(kind, 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.wake", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S,
                        help="seconds the daemon idles before each arrival")
    parser.add_argument("--poll-ms", type=float, default=DEFAULT_POLL_MS, help="status reads' interval")
    parser.add_argument("--hints", help="run.hints for the daemon: comma-separated names, or none")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-wake-") as tmp_name:
        results = machine() | measure(Path(tmp_name), args.idle_s, args.poll_ms / 1000, args.hints)
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

"""A real worker daemon (``processor run`` as a subprocess, against SeaweedFS) answers its probes and
``/metrics`` on the port it was given, and the numbers there are the work it did."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from testkit.images import bad_inputs, photo_bytes
from testkit.waits import HANG_GUARD_S, REQUEST_GUARD_S
from tests.integration import test_s3_integration
from tests.integration.test_s3_integration import cli_env

#: The versioned-bucket fixture of the S3 integration tests (a fixture is found by its name here).
bucket = test_s3_integration.bucket

#: Seconds the daemon gets to start, process the inputs, and stop; one request: hang guards.
DEADLINE_S = HANG_GUARD_S
HTTP_TIMEOUT_S = REQUEST_GUARD_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    """(status, body); status 0 while nothing listens on the port yet."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def wait_for(what: str, probe: Callable[[], Any], proc: subprocess.Popen, deadline: float) -> Any:
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        assert proc.poll() is None, f"the daemon exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(base + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@contextmanager
def daemon(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "processor", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_daemon_serves_probes_and_metrics_of_its_work(s3_server, bucket, tmp_path):
    name, client = bucket
    good = [f"inputs/toy{i}.jpg" for i in range(3)]
    for i, key in enumerate(good):
        client.put_object(Bucket=name, Key=key, Body=photo_bytes(320, 240, seed=i))
    client.put_object(Bucket=name, Key="inputs/page.jpg", Body=bad_inputs()["html-as-jpg"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(s3_server, name, tmp_path, PROCESSOR_METRICS__HOST="127.0.0.1")
    deadline = time.monotonic() + DEADLINE_S

    with daemon(env, "--metrics-port", str(port)) as proc:
        wait_for("/healthz", lambda: get(base + "/healthz")[0] == 200, proc, deadline)
        wait_for("/readyz", lambda: get(base + "/readyz") == (200, "ready\n"), proc, deadline)

        def all_resolved() -> dict | None:
            found = metrics(base)
            done = found[("processor_items_total", (("outcome", "done"),))]
            failed = found[("processor_items_total", (("outcome", "failed"),))]
            # The daemon rescans after progress: the backlog then reads 0.
            return found if (done, failed, found[("processor_backlog_inputs", ())]) == (3, 1, 0) else None

        found = wait_for("3 done, 1 failed, backlog 0 in /metrics", all_resolved, proc, deadline)
        listed = client.list_objects_v2(Bucket=name, Prefix="outputs/").get("Contents", [])
        assert sorted(o["Key"] for o in listed if o["Key"].endswith("manifest.json")) == [
            f"outputs/toy{i}/manifest.json" for i in range(3)]

        def count(stage: str) -> float:
            return found[("processor_stage_seconds_count", (("stage", stage),))]

        assert count("download") == 4
        assert [count(s) for s in ("decode", "render", "encode", "upload", "commit")] == [3] * 5
        assert found[("processor_style_seconds_count", (("style", "toon"),))] == 3
        assert found[("processor_stage_seconds_sum", (("stage", "render"),))] > 0
        assert found[("processor_store_requests_total", ())] > 0
        assert ("processor_store_retries_total", ()) in found
        assert found[("processor_claim_conflicts_total", ())] == 0
        assert found[("processor_ready", ())] == 1
        assert get(base + "/healthz")[0] == 200
        err = stop(proc)

    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["event"] == "metrics_serving" and e["port"] == port for e in events)
    assert all(e.get("key") for e in events if e["event"] in ("committed", "input_failed"))


def test_daemon_is_alive_but_not_ready_while_the_store_is_unreachable(s3_server, bucket, tmp_path):
    """Readiness covers the store: a scan that cannot reach it keeps /readyz at 503, /healthz at 200."""
    name, _ = bucket
    port, closed = free_port(), free_port()
    env = cli_env(s3_server, name, tmp_path, PROCESSOR_METRICS__PORT=str(port), PROCESSOR_METRICS__HOST="127.0.0.1",
                  PROCESSOR_STORE__ENDPOINT_URL=f"http://127.0.0.1:{closed}", PROCESSOR_STORE__MAX_ATTEMPTS="2",
                  PROCESSOR_STORE__MAX_BACKOFF_S="0.05", PROCESSOR_RUN__IDLE_BACKOFF_MAX_S="1")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE_S
    with daemon(env) as proc:
        status, body = wait_for("/readyz to blame the store",
                                lambda: (lambda r: r if "store unreachable" in r[1] else None)(get(base + "/readyz")),
                                proc, deadline)
        assert status == 503 and f"127.0.0.1:{closed}" in body
        assert get(base + "/healthz")[0] == 200
        found = metrics(base)
        assert found[("processor_scan_failures_total", ())] >= 1
        assert found[("processor_store_retries_total", ())] >= 1
        assert found[("processor_ready", ())] == 0
        stop(proc)

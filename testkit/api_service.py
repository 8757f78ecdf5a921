"""A real ``processor serve`` and a real ``processor run`` daemon as subprocesses, for the API tests
(and ``bench/api.py``): the serve binds port 0 and prints its URL, which is read from its log file.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from testkit.waits import HANG_GUARD_S, REQUEST_GUARD_S, wait_until

#: Seconds a server gets to print its URL and answer /readyz, and a job of the tiny toon style to
#: finish (a daemon polls every 0.2 s here): hang guards, not expectations (``testkit.waits``).
START_TIMEOUT_S = JOB_TIMEOUT_S = HANG_GUARD_S
#: Seconds the test servers hold a request that asks to wait for its job (api.max_wait_s).
MAX_WAIT_S = 60
#: Seconds the direct (prototype) route waits for its job (api.direct_timeout_s): long, as a busy
#: machine makes jobs slow, and below the clients' hang guard, so a stuck job ends in the server's
#: own answer.
DIRECT_TIMEOUT_S = int(HANG_GUARD_S) - 60
#: The base URL of in-process clients of an open app (``create_app(..., keys=[])``): an open server
#: answers its own host names only (``processor.api.guard``), and TestClient's default is not one.
OPEN_BASE_URL = "http://localhost"
TOKEN = "test-token-1"
OTHER_TOKEN = "test-token-2"
#: Standard Webhooks secret of the test servers ("whsec_" + base64).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"toy-cartoonizer-test-secret!").decode()

CONFIG = """\
styles: {toon: {engine: toon, variants: 2, max_side: 128}%(styles)s}
run: {styles: [toon], poll_interval_s: 0.2, idle_backoff_max_s: 0.5, full_rescan_s: 2}
claims: {ttl_s: 30, renew_s: 5, progress_s: 0.2}
pipeline: {contact_sheet_height: 64}
metrics: {port: 0}
api: {poll_s: 0.1, max_upload_bytes: %(max_upload)d, max_wait_s: %(max_wait)d, direct_timeout_s: %(direct)d,
      webhook_allow: [%(allow)s]%(api)s}
"""


@dataclass
class Service:
    """A running API (``url``) and the environment both processes got."""

    url: str
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path
    #: The ``processor run`` daemon beside it, when the test started one.
    worker: subprocess.Popen | None = None

    def client(self, token: str | None = TOKEN, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=REQUEST_GUARD_S, **kwargs)


def write_env(tmp: Path, store_env: dict[str, str], *, max_upload: int = 4_000_000,
              allow: tuple[str, ...] = ("127.0.0.1",), keys: str = f"tester:{TOKEN}:admin,{OTHER_TOKEN}",
              api: dict[str, object] | None = None, styles: dict[str, object] | None = None,
              config_name: str = "config.yaml") -> dict[str, str]:
    """The environment of a test server: its config file (``api``: more keys of its api section;
    ``styles``: more styles beside ``toon``), its clients (``keys``, as PROCESSOR_API_KEYS:
    ``TOKEN`` is an admin's) and store."""
    config = tmp / config_name
    allowed = ", ".join(f'"{a}"' for a in allow)
    more = "".join(f", {k}: {json.dumps(v)}" for k, v in (api or {}).items())
    config.write_text(CONFIG % {"max_upload": max_upload, "max_wait": MAX_WAIT_S, "direct": DIRECT_TIMEOUT_S,
                                "allow": allowed, "api": more,
                                "styles": "".join(f", {k}: {json.dumps(v)}" for k, v in (styles or {}).items())})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {"PROCESSOR_CONFIG": str(config), "PROCESSOR_API_KEYS": keys, "PROCESSOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            **store_env}
    return env


@contextmanager
def serve(env: dict[str, str], tmp: Path, *args: str) -> Iterator[Service]:
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "processor", "serve", "--port", "0", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _wait_url(proc, log)
        wait_until(lambda: httpx.get(url + "/readyz", timeout=REQUEST_GUARD_S).status_code == 200,
                   f"processor serve ready at {url}/readyz", check=lambda: _alive(proc, log))
        yield Service(url, env, proc, log)
    finally:
        stop(proc)


@contextmanager
def running(app: object) -> Iterator[str]:
    """``app`` served by uvicorn on a free port in a thread of this process (its store can be a
    test's own, slowed or failing); its URL."""
    import threading

    import uvicorn

    from processor.api.server import bind

    sock, url = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def worker(env: dict[str, str], tmp: Path) -> Iterator[subprocess.Popen]:
    log = tmp / f"worker-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "processor", "run", "--metrics-port", "0"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alive(proc: subprocess.Popen, log: Path) -> None:
    assert proc.poll() is None, f"processor serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


def _wait_url(proc: subprocess.Popen, log: Path) -> str:
    found = wait_until(lambda: re.search(r"serving (http://\S+) over", log.read_text(errors="replace")),
                       "processor serve printing its URL", timeout_s=START_TIMEOUT_S, check=lambda: _alive(proc, log))
    return found.group(1)


def rss_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_status(client: httpx.Client, job: str, wanted: set[str], timeout: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/jobs/{job}").json()
        if body["status"] in wanted:
            return body
        assert time.monotonic() < deadline, f"job {job} stayed {body['status']}: {body}"
        time.sleep(0.1)

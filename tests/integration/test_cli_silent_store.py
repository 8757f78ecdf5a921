"""A store that accepts connections and never answers (a hung proxy, a firewall that swallows the
requests): every one-shot command ends with the message a refused port gets and exit 8, within
``store.command_timeout_s``; the daemon keeps retrying with back-off.

The store is a real listener on a free port that accepts every connection and never sends a byte.
The wall-time bounds below are hang guards, not speed checks: the tests assert the exit code and
the message, and that the command ended."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.errors import EXIT_DOCTOR, EXIT_INCOMPLETE
from testkit.blackhole import BlackHole
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S, wait_until

#: Seconds of store.command_timeout_s in most tests here: the bound scales with it, and a short one
#: keeps six commands quick. The default (30) is run once, by ``status``.
SHORT_COMMAND_TIMEOUT_S = 6.0
#: The hint every store failure of a remote store ends with.
HINT = "and that the S3 server there is up"


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text("styles: {toon: {engine: toon, variants: 1, max_side: 128}}\n"
                                          "metrics: {port: 0}\n")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cow.jpg").write_bytes(photo_bytes(96, 80))
    return tmp_path


def s3_env(port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": "toys",
            "PROCESSOR_STORE__ENDPOINT_URL": f"http://127.0.0.1:{port}", "PROCESSOR_STORE__REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
            "PROCESSOR_METRICS__PORT": "0"}
    env |= {f"PROCESSOR_STORE__{k.upper()}": v for k, v in settings.items()}
    return env


def processor(env: dict[str, str], cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "processor", *args, "--log-format", "text"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    return proc, time.monotonic() - started


def the_error(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # printed once
    return errors[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [
    ["status"],
    ["results", "cow.jpg", "--out", "got"],
    ["retry", "--dry-run"],
    ["retry"],
    ["submit", "photos"],
    ["run", "--once"],
])
def test_a_one_shot_command_gives_up_with_the_refused_port_message(black_hole, project, command) -> None:
    env = s3_env(black_hole.port, command_timeout_s=str(SHORT_COMMAND_TIMEOUT_S))
    proc, took_s = processor(env, project, *command)
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr
    error = the_error(proc)
    assert f"check store.endpoint_url (http://127.0.0.1:{black_hole.port}) {HINT}" in error
    assert "ReadTimeoutError" in error and "Traceback" not in proc.stderr
    assert black_hole.accepted, "the command never reached the listener"
    # Retries are for a person: text lines, never JSON, each naming its attempt.
    retries = [line for line in proc.stderr.splitlines() if line.startswith("store: ")]
    assert retries and all("attempt" in line and "of 3" in line for line in retries), proc.stderr
    assert not any(line.startswith("{") for line in proc.stderr.splitlines())
    assert took_s < HANG_GUARD_S


def test_on_a_terminal_the_retries_are_text_without_being_asked(black_hole, project) -> None:
    """``log.format: auto`` with stderr a terminal (a pseudo-terminal here): sentences, never JSON."""
    import pty

    controller, terminal = pty.openpty()
    try:
        env = s3_env(black_hole.port, command_timeout_s=str(SHORT_COMMAND_TIMEOUT_S))
        proc = subprocess.run([sys.executable, "-m", "processor", "status"], cwd=project, stdout=subprocess.PIPE,
                              stderr=terminal, env=env, timeout=HANG_GUARD_S, check=False)
        os.close(terminal)
        terminal = -1
        said = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            said += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == EXIT_INCOMPLETE
    # The header says where before the store is asked anything (status's first line is on stdout).
    header = proc.stdout.decode().splitlines()
    assert header[0].startswith(f"config: {project / 'config.yaml'} + environment ") and "store.bucket" in header[0]
    assert header[1:] == [f"store: s3://toys at http://127.0.0.1:{black_hole.port}"]
    lines = said.decode().splitlines()
    assert any(line.startswith("store: ") and "attempt" in line for line in lines), lines
    assert [line for line in lines if line.startswith("error: ")] and not any(line.startswith("{") for line in lines)


def test_the_message_is_the_one_a_refused_port_gets(black_hole, project) -> None:
    silent, _ = processor(s3_env(black_hole.port, command_timeout_s=str(SHORT_COMMAND_TIMEOUT_S)), project, "status")
    port = closed_port()
    refused, _ = processor(s3_env(port), project, "status")
    assert silent.returncode == refused.returncode == EXIT_INCOMPLETE
    for proc, where in ((silent, black_hole.port), (refused, port)):
        assert the_error(proc).endswith(f"-> check store.endpoint_url (http://127.0.0.1:{where}) {HINT}")


def test_doctor_reports_the_silent_store_in_its_table(black_hole, project) -> None:
    proc, _ = processor(s3_env(black_hole.port, command_timeout_s=str(SHORT_COMMAND_TIMEOUT_S)), project, "doctor")
    assert proc.returncode == EXIT_DOCTOR, proc.stdout + proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if line.strip()}
    assert " FAIL " in rows["store"] and "store.endpoint_url" in rows["store"]
    assert " FAIL " in rows["list inputs"] and "ReadTimeoutError" in rows["list inputs"]
    assert " ok " in rows["style toon"]  # the checks after the store still ran


def test_the_default_command_timeout_ends_status(black_hole, project) -> None:
    """``store.command_timeout_s`` at its default: the command ends by itself (about 20 s here)."""
    proc, took_s = processor(s3_env(black_hole.port), project, "status")
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr
    assert HINT in the_error(proc)
    assert took_s < HANG_GUARD_S


def test_the_daemon_keeps_retrying_with_back_off(black_hole, project) -> None:
    """``run`` without ``--once`` takes the configured retries, not the command's: a scan that ran out
    of them is logged and the daemon scans again later; SIGTERM stops it with exit 0."""
    env = s3_env(black_hole.port, command_timeout_s="5", read_timeout_s="1", max_attempts="2",
                 max_backoff_s="0.2")
    env |= {"PROCESSOR_RUN__POLL_INTERVAL_S": "0.2", "PROCESSOR_RUN__IDLE_BACKOFF_MAX_S": "0.4"}
    daemon = subprocess.Popen([sys.executable, "-m", "processor", "run", "--log-format", "json"], env=env,
                              cwd=project, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in daemon.stderr:  # type: ignore[union-attr]
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        def failed_scans() -> int:
            return sum(1 for line in list(lines) if line.startswith("{") and json.loads(line)["event"] == "scan_failed")

        def alive() -> None:
            if daemon.poll() is not None:
                pytest.fail("the daemon exited:\n" + "".join(lines))

        wait_until(lambda: failed_scans() >= 3, "three failed scans of the daemon", check=alive)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=HANG_GUARD_S) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        reader.join(timeout=HANG_GUARD_S)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert events[0]["event"] == "using" and events[0]["store"] == f"s3://toys at http://127.0.0.1:{black_hole.port}"
    retries = [e for e in events if e["event"] == "store_retry"]
    assert retries and all(e["attempts"] == 2 for e in retries)  # the daemon's store.max_attempts
    assert not any(e["event"] == "fatal" for e in events)

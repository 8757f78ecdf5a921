"""A taken metrics port: the default one must not stop work, a configured one stays exit 3.

One worker per GPU on one host is common; before, the second `processor run` on a host died
because the first held 9108. The rule: when nothing (config file, environment,
``--metrics-port``) named ``metrics.port``, a taken port makes the worker serve on a free one and
log ``metrics_port_taken``; a port someone chose (a pod's probes target it) that is taken is a
configuration error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.config import DEFAULT_METRICS_PORT, MetricsSettings, load_settings
from processor.errors import EXIT_CONFIG, ConfigError
from processor.worker.metrics import MetricsEndpoint, describe_endpoint
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.unit.test_metrics import get

#: Seconds one `processor run --once` over two small photos may take: a hang guard.
RUN_TIMEOUT_S = HANG_GUARD_S


@contextlib.contextmanager
def held_port(port: int = 0, host: str = "0.0.0.0") -> Iterator[int]:
    """Listen on ``port`` (0: a free one) for the block; yields the port number.

    For a fixed port that another program already holds, yields without binding: the port is
    taken either way, which is all these tests need (they never depend on a port being free).
    """
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            yield port
            return
        sock.listen()
        yield sock.getsockname()[1]


def default_port_settings(port: int) -> MetricsSettings:
    """MetricsSettings whose port no source named (as ``MetricsSettings()``) but is ``port``.

    The real default is 9108; a test that needs "the default port is taken" without touching
    9108 builds this: the same fields-set state that config loading gives an unset port.
    """
    return MetricsSettings.model_construct(_fields_set={"host"}, host="127.0.0.1", port=port,
                                           stall_s=MetricsSettings().stall_s)


def test_port_is_default_follows_what_the_sources_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PROCESSOR_METRICS__PORT", raising=False)
    assert MetricsSettings().port_is_default
    assert not MetricsSettings(port=DEFAULT_METRICS_PORT).port_is_default  # named, even if equal
    unset = tmp_path / "unset.yaml"
    unset.write_text("metrics: {host: 127.0.0.1}\n")
    assert load_settings(unset).metrics.port_is_default
    named = tmp_path / "named.yaml"
    named.write_text("metrics: {port: 9108}\n")
    assert not load_settings(named).metrics.port_is_default
    monkeypatch.setenv("PROCESSOR_METRICS__PORT", "9108")
    assert not load_settings(unset).metrics.port_is_default
    # --metrics-port goes through model_copy(update=...), which marks the field as set.
    assert not MetricsSettings().model_copy(update={"port": 1234}).port_is_default
    # The shipped config.yaml leaves the port unset; the cluster's ConfigMap pins it.
    root = Path(__file__).resolve().parents[2]
    monkeypatch.delenv("PROCESSOR_METRICS__PORT")
    assert load_settings(root / "config.yaml").metrics.port_is_default
    assert not load_settings(root / "deploy" / "base" / "config.yaml").metrics.port_is_default


def test_a_taken_default_port_serves_on_a_free_one_and_says_so(caplog):
    with held_port(host="127.0.0.1") as taken:
        with caplog.at_level(logging.WARNING, logger="processor.metrics"):
            endpoint = MetricsEndpoint(default_port_settings(taken))
        try:
            assert endpoint.port not in (None, taken)
            assert get(f"http://127.0.0.1:{endpoint.port}/healthz")[0] == 200
            (warning,) = [r for r in caplog.records if r.getMessage() == "metrics_port_taken"]
            assert (warning.port, warning.serving_on) == (taken, endpoint.port)
            assert "metrics.port" in warning.hint
        finally:
            endpoint.close()
        status, detail = describe_endpoint(default_port_settings(taken))
        assert status == "warn" and "free port instead" in detail


def test_a_taken_configured_port_is_a_configuration_error():
    with held_port(host="127.0.0.1") as taken:
        settings = MetricsSettings(host="127.0.0.1", port=taken)
        with pytest.raises(ConfigError, match=rf"metrics\.port: cannot listen on 127\.0\.0\.1:{taken}"):
            MetricsEndpoint(settings)
        status, detail = describe_endpoint(settings)
        assert status == "warn" and "would stop at start" in detail


def test_a_bad_host_is_still_an_error_with_the_default_port():
    # Only "address in use" falls back; anything else about the address is the user's to fix.
    with pytest.raises(ConfigError, match=r"metrics\.port: cannot listen on 192\.0\.2\.1"):
        MetricsEndpoint(MetricsSettings.model_construct(_fields_set=set(), host="192.0.2.1",  # TEST-NET: not ours
                                                        port=DEFAULT_METRICS_PORT, stall_s=MetricsSettings().stall_s))


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def bucket_project(tmp_path) -> Path:
    """A project dir whose config names no metrics port, with two photos submitted."""
    (tmp_path / "config.yaml").write_text(
        "store: {kind: local, root: bucket}\n"
        "styles: {toon: {engine: toon, variants: 1, max_side: 128}}\n"
        "run: {styles: [toon]}\n"
        "pipeline: {contact_sheet: false}\n"
    )
    for i in range(2):
        path = tmp_path / "bucket" / "inputs" / f"toy-{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_bytes(160, 120, seed=i))
    return tmp_path


def run_env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
    return env | {"PROCESSOR_CONFIG": str(project / "config.yaml")}


def start_run(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "processor", "run", "--once", *args], cwd=project,
                            env=run_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_run_goes_on_when_the_default_port_is_taken(bucket_project):
    with held_port(DEFAULT_METRICS_PORT):
        proc = start_run(bucket_project)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, stderr
    found = events(stderr)
    (taken,) = [e for e in found if e["event"] == "metrics_port_taken"]
    assert taken["port"] == DEFAULT_METRICS_PORT and taken["serving_on"] != DEFAULT_METRICS_PORT
    (start,) = [e for e in found if e["event"] == "worker_start"]
    assert start["metrics_port"] == taken["serving_on"]  # the port it serves, not the one it wanted
    assert len(list((bucket_project / "bucket" / "outputs").glob("*/manifest.json"))) == 2


def test_run_with_a_taken_configured_port_exits_3(bucket_project):
    with held_port() as taken:
        proc = start_run(bucket_project, "--metrics-port", str(taken))
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == EXIT_CONFIG, stderr
    assert f"cannot listen on 0.0.0.0:{taken}" in stderr and "metrics.port" in stderr
    assert not list((bucket_project / "bucket" / "outputs").glob("*/manifest.json"))


def test_two_workers_on_one_host_just_work(bucket_project):
    """Two unconfigured workers side by side (one per GPU): both finish, every input once."""
    procs = [start_run(bucket_project) for _ in range(2)]
    results = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
    served = [next(e["metrics_port"] for e in events(err) if e["event"] == "worker_start") for _, err in results]
    assert len(set(served)) == 2 and None not in served
    assert len(list((bucket_project / "bucket" / "outputs").glob("*/manifest.json"))) == 2

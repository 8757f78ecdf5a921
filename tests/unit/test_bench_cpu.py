"""bench.api's CPU accounting per process, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.api import child_pids, cpu_by_role, cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def test_cpu_seconds_grow_with_work_and_a_gone_process_has_none() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.1
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_seconds(gone.pid) == 0.0


def test_child_pids_finds_a_process_started_here() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
        assert cpu_by_role({"me": [os.getpid()], "child": [child.pid]})["me"] > 0
    finally:
        child.kill()
        child.wait()
    assert child.pid not in child_pids(os.getpid())

"""The worker as a Kubernetes Job sees it: the exit code of a drain stopped by SIGTERM, and the
liveness (/healthz) of a worker busy with one long item.

An Indexed Job counts an index done when its pod exits 0. A worker evicted, preempted or deleted
mid-drain gets SIGTERM; exiting 0 then would mark the index complete with inputs still waiting,
so ``run --once`` exits ``EXIT_STOPPED`` while inputs remain, and the Job runs the index again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from processor.config import load_settings
from processor.errors import EXIT_STOPPED
from processor.pipeline.render import EngineRegistry
from processor.pipeline.toon import ToonEngine
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.metrics import PrometheusObserver
from processor.worker.runner import Worker
from testkit.images import photo_bytes

#: Inputs in the bucket: far more than the worker holds at once (prefetch 1, the upload queue).
INPUTS = 16
#: Seconds the subprocess gets to reach its first commit, and then to stop.
START_DEADLINE_S = 120.0
STOP_DEADLINE_S = 60.0


def _config(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon"], "prefetch": 1, "upload_queue": 1, "poll_interval_s": 0.05},
        "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 512}},
        "pipeline": {"contact_sheet_height": 64},
        "metrics": {"port": 0},
    }))
    return config


def _env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
    return env | {"PROCESSOR_CONFIG": str(config)}


def _events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_sigterm_mid_drain_exits_stopped_and_a_rerun_finishes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = LocalStore(tmp_path / "bucket")
    layout = KeyLayout(load_settings(config).prefixes)
    inputs = [f"inputs/toy{i:02d}.jpg" for i in range(INPUTS)]
    for i, key in enumerate(inputs):
        store.put(key, photo_bytes(800, 600, seed=i))

    proc = subprocess.Popen([sys.executable, "-m", "processor", "run", "--once"], env=_env(config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not any(e.get("event") == "committed" for e in _events(seen[-1:])):
            assert time.monotonic() < deadline and proc.poll() is None, "no commit before the deadline:\n" + "".join(
                seen[-20:])
            seen.append(proc.stderr.readline())  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends an evicted or deleted pod
        _, rest = proc.communicate(timeout=STOP_DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = _events(seen + rest.splitlines())

    committed = [k for k in inputs if any(o.key == layout.for_input(k).manifest for o in store.list("outputs/"))]
    assert 1 <= len(committed) < INPUTS, f"{len(committed)} of {INPUTS} committed: the stop came too late to test"
    assert proc.returncode == EXIT_STOPPED, rest[-3000:]
    (stopped,) = [e for e in events if e["event"] == "stopped_early"]
    assert stopped["left"] == INPUTS - len(committed)
    assert [e["exit_code"] for e in events if e["event"] == "worker_stop"] == [EXIT_STOPPED]
    # The held claims were given back, so the retried index (or any pod) takes the inputs at once.
    assert not list(store.list(layout.claims_prefix))

    # The Job's retry of the index: a new run drains the rest and exits 0.
    again = subprocess.run([sys.executable, "-m", "processor", "run", "--once"], env=_env(config),
                           capture_output=True, text=True, timeout=START_DEADLINE_S + STOP_DEADLINE_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(any(o.key == layout.for_input(k).manifest for o in store.list("outputs/")) for k in inputs)


def test_a_stop_after_the_last_input_exits_zero(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path))
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.jpg", photo_bytes(320, 240))
    workers: list[Worker] = []

    class StopWhileComputing(ToonEngine):
        """Stops the worker while it computes the only input: that one still commits."""

        def __call__(self, image: Any, context: Any = None) -> Any:
            workers[0].request_stop()
            return super().__call__(image, context)

    workers.append(Worker(store, settings, EngineRegistry(settings.styles, StopWhileComputing), worker_id="w1"))
    workers[0].setup()
    assert workers[0].run_once() == 0
    assert any(o.key.endswith("manifest.json") for o in store.list("outputs/"))


# --------------------------------------------------------------------------- liveness


class SlowSteps(ToonEngine):
    """The toon engine as a long diffusion style looks from outside: it reports ``STEPS`` steps,
    and each one takes ``step_s`` on the injected clock."""

    STEPS = 5

    def __init__(self, name: str, style: Any, clock: list[float], step_s: float,
                 health: list[bool], observer: PrometheusObserver) -> None:
        super().__init__(name, style)
        self.clock, self.step_s, self.health, self.observer = clock, step_s, health, observer

    def __call__(self, image: Any, context: Any = None) -> Any:
        for step in range(self.STEPS):
            self.clock[0] += self.step_s
            context.progress(f"style:{self.style_name}", step=step + 1, steps=self.STEPS)
            self.health.append(self.observer.health()[0])
        return super().__call__(image, context)


def test_a_long_item_keeps_the_liveness_probe_green_while_its_steps_advance(tmp_path: Path) -> None:
    """One item takes three times metrics.stall_s, but every step is progress: /healthz never fails."""
    stall_s = 100.0
    clock = [0.0]
    observer = PrometheusObserver(stall_s=stall_s, clock=lambda: clock[0])
    health: list[bool] = []

    def engine(name: str, style: Any) -> SlowSteps:
        return SlowSteps(name, style, clock, stall_s * 0.6, health, observer)

    # Without claims (coordination: shards) too: no claim to report to, still a heartbeat.
    for use_claims in (True, False):
        settings = load_settings(_config(tmp_path / f"claims-{use_claims}"))
        store = LocalStore(settings.store.root)
        store.put("inputs/toy.jpg", photo_bytes(320, 240))
        health.clear()
        started = clock[0]
        worker = Worker(store, settings, EngineRegistry(settings.styles, engine), worker_id="w1",
                        use_claims=use_claims, observer=observer)
        worker.setup()
        assert worker.run_once() == 0
        assert health == [True] * SlowSteps.STEPS, (use_claims, health)
        assert clock[0] - started > 2 * stall_s  # the item really outlasted stall_s

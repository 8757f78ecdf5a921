"""docs/cli.md's exit-code table is the truth: every ``EXIT_*`` code has a row, and each row is
driven here through the real command (in-process ``main``, or a subprocess where a signal is
involved)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor import errors
from processor.cli.main import main
from processor.store.local import LocalStore
from testkit.blackhole import BlackHole
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S, wait_until
from tests.cli_project import cli_project

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def documented_codes() -> dict[int, str]:
    table = DOCS.read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", table, re.MULTILINE)}


def test_the_table_lists_every_exit_code_and_no_other() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")} | {0}
    assert set(documented_codes()) == codes


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_project(tmp_path, monkeypatch, {"cow.jpg": photo_bytes(96, 80)})


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """``run`` installs its own SIGTERM/SIGINT handlers in this process: put pytest's back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_0_success(project: Path) -> None:
    assert main(["submit", "photos", "-q"]) == 0
    assert main(["run", "--once", "-q"]) == 0
    assert main(["results", "cow.jpg", "--out", "got", "-q"]) == 0


def test_1_failed_files_refused_files_and_no_result(project: Path) -> None:
    (project / "photos" / "notes.txt").write_text("not a photo")
    assert main(["submit", "photos", "-q"]) == errors.EXIT_SOME_FAILED
    assert main(["results", "nope.jpg", "--out", "got", "-q"]) == errors.EXIT_SOME_FAILED  # an unknown key
    assert main(["results", "cow.jpg", "--out", "got", "-q"]) == errors.EXIT_SOME_FAILED  # no result yet
    (project / "photos" / "broken.jpg").write_bytes(b"<html></html>")
    assert main(["process", "photos/broken.jpg", "--out", "out", "-q"]) == errors.EXIT_SOME_FAILED


def test_2_usage(project: Path) -> None:
    for argv in (["run", "--oncee"], ["stauts"], ["results"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == errors.EXIT_USAGE


def test_3_configuration_and_arguments(project: Path) -> None:
    assert main(["run", "--once", "--style", "nope", "-q"]) == errors.EXIT_CONFIG
    assert main(["process", "no-such-folder", "--out", "out", "-q"]) == errors.EXIT_CONFIG  # a missing path
    (project / "config.yaml").write_text("run: {styels: [toon]}\n")
    assert main(["status", "-q"]) == errors.EXIT_CONFIG


def test_4_store_refused_or_no_local_bucket(project: Path) -> None:
    assert main(["status", "-q"]) == errors.EXIT_STORE
    assert main(["results", "cow.jpg", "--out", "got", "-q"]) == errors.EXIT_STORE


def test_5_model_missing_offline(project: Path) -> None:
    pytest.importorskip("huggingface_hub", reason="the sd extra is not installed")
    (project / "config.yaml").write_text(
        "styles: {toon: {engine: toon}, paint: {engine: img2img, model: org/paint-model}}\n"
        f"models: {{offline: true, cache_dir: {project / 'cache'}}}\n")
    assert main(["models", "pull", "--dry-run", "-q"]) == errors.EXIT_MODEL


def test_6_doctor_found_a_problem(project: Path) -> None:
    assert main(["doctor", "-q"]) == errors.EXIT_DOCTOR  # no bucket here


class CrashingEngine:
    """The toon engine's name and description, and a stage that always crashes."""

    def __init__(self, name: str, style: object) -> None:
        from processor.pipeline.toon import ToonEngine

        self.inner = ToonEngine(name, style)
        self.style_name, self.engine = self.inner.style_name, self.inner.engine

    def setup(self) -> None:
        self.inner.setup()

    def __call__(self, image: object, context: object = None) -> object:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def test_7_unhealthy(project: Path, monkeypatch: pytest.MonkeyPatch, signal_handlers: None) -> None:
    import processor.cli.run as run_command
    from processor.pipeline.render import EngineRegistry

    store = LocalStore(project / "bucket")
    for i in range(3):
        store.put(f"inputs/toy{i}.jpg", photo_bytes(96, 80, seed=i))
    monkeypatch.setenv("PROCESSOR_RUN__MAX_CONSECUTIVE_FAILURES", "2")
    # One compute slot: the crashing registry replaces this process's, not a compute process's.
    monkeypatch.setenv("PROCESSOR_RUN__CPU_WORKERS", "1")
    monkeypatch.setattr(run_command, "build_registry", lambda settings: EngineRegistry(settings.styles, CrashingEngine))
    assert main(["run", "--once", "-q"]) == errors.EXIT_UNHEALTHY


def test_8_the_store_kept_failing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hole = BlackHole()
    try:
        for name, value in {"KIND": "s3", "BUCKET": "toys", "ENDPOINT_URL": f"http://127.0.0.1:{hole.port}",
                            "REGION": "us-east-1", "COMMAND_TIMEOUT_S": "5"}.items():
            monkeypatch.setenv(f"PROCESSOR_STORE__{name}", value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        assert main(["status", "-q"]) == errors.EXIT_INCOMPLETE
    finally:
        hole.close()


def _slow_run(project: Path, inputs: int) -> subprocess.Popen[str]:
    """``run --once`` over ``inputs`` photos large enough that it is still busy when signalled."""
    store = LocalStore(project / "bucket")
    for i in range(inputs):
        store.put(f"inputs/toy{i:02d}.jpg", photo_bytes(800, 600, seed=i))
    (project / "config.yaml").write_text("store: {kind: local, root: bucket}\n"
                                         "styles: {toon: {engine: toon, variants: 2, max_side: 512}}\n"
                                         "run: {prefetch: 1}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")} | {"PROCESSOR_METRICS__PORT": "0"}
    return subprocess.Popen([sys.executable, "-m", "processor", "run", "--once", "--log-format", "json"],
                            cwd=project, env=env, stderr=subprocess.PIPE, text=True)


def test_9_run_once_stopped_with_inputs_left(project: Path) -> None:
    proc = _slow_run(project, inputs=12)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"committed"' in line:  # working for real: stop it now
                proc.send_signal(signal.SIGTERM)
                break
        _, rest = proc.communicate(timeout=HANG_GUARD_S)  # read on: a full pipe would block the worker
        assert proc.returncode == errors.EXIT_STOPPED, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_130_interrupted(project: Path) -> None:
    """Ctrl-C on a command waiting for its store."""
    hole = BlackHole()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": "toys", "PROCESSOR_METRICS__PORT": "0",
            "PROCESSOR_STORE__ENDPOINT_URL": f"http://127.0.0.1:{hole.port}", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "PROCESSOR_STORE__REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "processor", "status"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: hole.accepted, "the command's first request")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == errors.EXIT_INTERRUPTED and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hole.close()

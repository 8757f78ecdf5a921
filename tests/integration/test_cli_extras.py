"""The command line on the core install (no ``sd`` extra): one line naming the extra and its
install command, and ``doctor``'s table with the missing parts marked, never a traceback.

The core install is simulated in a subprocess whose imports of the extra's packages fail as a
missing package's do (``testkit.blockers``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from processor.cli.extras import EXTRA_MODULES, Extra, extra_of
from processor.errors import EXIT_CONFIG, EXIT_DOCTOR
from testkit.blockers import env_without
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S

INSTALL_SD = 'pip install -e ".[sd]"'
#: A diffusion style: its engine imports torch and diffusers when it loads.
CONFIG = (
    "store: {kind: local, root: bucket}\n"
    "styles:\n"
    "  toon: {engine: toon, variants: 1, max_side: 128}\n"
    "  paint: {engine: img2img, model: org/paint-model}\n"
    "run: {styles: [%s]}\n"
    "metrics: {port: 0}\n"
)


@pytest.fixture
def core_install(tmp_path: Path) -> dict[str, str]:
    """A project folder (cwd) and the environment of an install without the sd extra."""
    (tmp_path / "bucket").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cow.jpg").write_bytes(photo_bytes(96, 80))
    (tmp_path / "config.yaml").write_text(CONFIG % "toon")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
    return env_without(EXTRA_MODULES[Extra.SD], tmp_path / "core-site", base)


def processor(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=HANG_GUARD_S, check=False)


def test_the_blocker_behaves_like_a_missing_package(core_install, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=core_install, cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in proc.stderr


def test_doctor_prints_its_table_and_marks_the_missing_extra(core_install, tmp_path) -> None:
    proc = processor(core_install, tmp_path, "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # run.styles is toon: a warning, not a failure
    assert "Traceback" not in proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if line.strip()}
    assert " warn " in rows["extra sd"] and INSTALL_SD in rows["extra sd"] and "torch" in rows["extra sd"]
    assert " ok " in rows["style toon"] and " ok " in rows["store"]
    assert " warn " in rows["add-on and caption models"]


def test_doctor_marks_the_smaller_mask_extra_and_what_runs_without_it(core_install, tmp_path) -> None:
    """The core install without onnxruntime: the default subject mask (u2netp) needs only the mask
    extra, and GrabCut stands in meanwhile: a warning naming that extra, not the sd one."""
    proc = processor(core_install, tmp_path, "doctor")
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if line.strip()}
    assert " warn " in rows["extra mask"] and 'pip install -e ".[mask]"' in rows["extra mask"], proc.stdout
    assert "onnxruntime" in rows["extra mask"] and "GrabCut" in rows["extra mask"]
    assert extra_of(ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")) is Extra.MASK


def test_doctor_fails_a_diffusion_style_in_run_styles_and_names_the_extra(core_install, tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG % "toon, paint")
    proc = processor(core_install, tmp_path, "doctor")
    assert proc.returncode == EXIT_DOCTOR, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if line.strip()}
    assert " FAIL " in rows["extra sd"] and "run.styles needs it" in rows["extra sd"]
    assert " FAIL " in rows["style paint"] and INSTALL_SD in rows["style paint"]
    assert " ok " in rows["style toon"]


@pytest.mark.parametrize("command", [
    ["process", "photos", "--out", "out", "--style", "paint"],
    ["run", "--once", "--style", "paint"],
    ["models", "pull", "--dry-run"],
])
def test_a_command_that_needs_the_extra_says_so_in_one_line(core_install, tmp_path, command) -> None:
    proc = processor(core_install, tmp_path, *command, "--quiet")
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, nothing else
    assert proc.stderr.startswith("error: ") and INSTALL_SD in proc.stderr and "sd extra" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_line_is_one_json_event_for_a_collector(core_install, tmp_path) -> None:
    proc = processor(core_install, tmp_path, "run", "--once", "--style", "paint", "--log-format", "json")
    assert proc.returncode == EXIT_CONFIG
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [e["event"] for e in events] == ["using", "fatal"], proc.stderr
    assert events[1]["error"] == "MissingExtra" and INSTALL_SD in events[1]["detail"]
    assert events[1]["exit_code"] == EXIT_CONFIG


def test_a_toon_run_on_the_core_install_works(core_install, tmp_path) -> None:
    assert processor(core_install, tmp_path, "submit", "photos", "-q").returncode == 0
    proc = processor(core_install, tmp_path, "run", "--once", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bucket/outputs/cow/manifest.json").exists()

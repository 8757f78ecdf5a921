"""The GPU suite's machinery (``bench/gpu_suite.py``), so the script prepared for the one GPU slot
does not rot between slots: step selection, timeouts, the summary written after each step, the
goals read from the figures, the wheel list, and the guard the CPU rehearsal runs under.

The steps themselves are the benchmarks' own smoke tests (tests/integration/test_bench.py, tests/models/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_suite
from bench.gpu_suite import Plan, Status, Step, StepResult

ROOT = Path(__file__).resolve().parents[2]


def py(code: str):
    return lambda plan: [sys.executable, "-c", code]


def plan_in(tmp_path: Path) -> Plan:
    return Plan(tiny=True, out=tmp_path / "out", work=tmp_path / "work", photos=tmp_path / "photos")


def test_a_failing_or_hanging_step_does_not_stop_the_rest(tmp_path) -> None:
    steps = [
        Step("good", 30, 30, py('print("noise"); print(\'{"processor_images_per_s": 2.5, "x": 1}\')'), "prints JSON",
             keys=("processor_images_per_s",)),
        Step("bad", 30, 30, py("import sys; print('Traceback ...', file=sys.stderr); "
                               "sys.exit('ValueError: what went wrong')"), "fails"),
        Step("slow", 1, 1, py("import time; time.sleep(30)"), "outlives its budget"),
        Step("late", 30, 30, py("print('{}')"), "runs after the others"),
    ]
    plan = plan_in(tmp_path)
    results = gpu_suite.run_suite(plan, steps, budget_s=300)

    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.TIMEOUT, Status.OK]
    assert results[0].figures == {"processor_images_per_s": 2.5, "x": 1}
    assert results[1].note == "ValueError: what went wrong" and results[1].rc == 1
    assert results[2].budget_s == 1 and results[2].seconds < 15
    summary = json.loads((plan.out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok", "failed", "timeout", "ok"]
    text = (plan.out / "summary.md").read_text()
    assert "| bad | failed (rc 1) |" in text and "ValueError: what went wrong" in text
    log = (plan.out / "steps.log").read_text()
    assert log.count("=====") == 4 and "Traceback ..." in log and "time.sleep(30)" in log
    # At most 8 files come back from a device call, none in sub-folders.
    assert sorted(p.name for p in plan.out.iterdir()) == ["steps.log", "summary.json", "summary.md"]


def test_steps_past_the_budget_are_skipped_and_recorded(tmp_path) -> None:
    times = iter([0.0, 0.0, 500.0])  # the deadline, the first step's start, then far past the deadline
    steps = [Step(name, 30, 30, py("print('{}')"), name) for name in ("first", "second")]
    results = gpu_suite.run_suite(plan_in(tmp_path), steps, budget_s=100, clock=lambda: next(times))
    assert [r.status for r in results] == [Status.OK, Status.SKIPPED]
    assert "out of time" in results[1].note
    assert "| second | skipped |" in (tmp_path / "out" / "summary.md").read_text()


def test_a_step_gets_what_is_left_of_the_budget_when_that_is_less(tmp_path) -> None:
    times = iter([0.0, 60.0])
    step = Step("one", 300, 300, py("print('{}')"), "one")
    [result] = gpu_suite.run_suite(plan_in(tmp_path), [step], budget_s=100, clock=lambda: next(times))
    assert result.budget_s == 100 - 60 - gpu_suite.RESERVE_S


def test_pytest_counts_are_parsed() -> None:
    step = next(s for s in gpu_suite.STEPS if s.name == "pytest-gpu")
    out = "..s\n=== short test summary ===\n2 passed, 1 skipped, 27 deselected in 9.68s\n"
    assert gpu_suite.parse_output(step, out) == {"passed": 2, "skipped": 1, "deselected": 27}


def test_goals_are_read_from_the_img2img_figures() -> None:
    def result(name: str, **figures: float) -> StepResult:
        return StepResult(name, "", "", Status.OK, 0, 1.0, 10, figures)

    found = gpu_suite.goals([
        result("img2img-fp16", processor_unet_fraction_of_peak=0.3, ratio_processor_over_notebook=2.4,
               notebook_images_per_s=1.0, ratio_shared_over_notebook=1.1),
        result("img2img-bf16", processor_unet_fraction_of_peak=0.45, unet_alone_fraction_of_peak=0.6,
               ratio_processor_over_notebook=1.5),
        result("img2img-bf16-compile", processor_images_per_s=3.0),  # no notebook in this step
    ])
    met = {(g.source, g.figure): g.met for g in found}
    assert met[("img2img-bf16", "processor_unet_fraction_of_peak")] is True
    assert met[("img2img-fp16", "processor_unet_fraction_of_peak")] is False
    assert met[("img2img-fp16", "processor / notebook images/s")] is True
    assert met[("img2img-bf16", "processor / notebook images/s")] is False
    assert met[("img2img-fp16", "ratio_shared_over_notebook (shared_rounds 3)")] is False
    # The compiled step is compared with the float16 step's notebook (3.0 / 1.0 images/s).
    compiled = [g for g in found if g.source.startswith("img2img-bf16-compile")]
    assert [g.value for g in compiled] == [3.0] and compiled[0].met


def test_selection_names_the_steps_and_list_prints_every_command(capsys) -> None:
    assert [s.name for s in gpu_suite.select("real-run,env", None)] == ["env", "real-run"]
    assert "env" not in [s.name for s in gpu_suite.select(None, "env")]
    with pytest.raises(SystemExit, match="unknown step 'nope'; the steps are: env, build"):
        gpu_suite.select("nope", None)
    assert gpu_suite.main(["run", "--list"]) == 0
    listed = capsys.readouterr().out
    for step in gpu_suite.STEPS:
        assert step.name in listed
    assert "-m gpu" in listed and "tests/models/test_caption.py" in listed  # the gpu-marked files
    assert gpu_suite.main(["run", "--list", "--tiny"]) == 0
    assert "--tiny" in capsys.readouterr().out


def test_photos_are_synthesised_without_a_source(tmp_path) -> None:
    made = gpu_suite.prepare_photos(tmp_path / "absent", tmp_path / "photos", 3, side=128)
    from PIL import Image

    sizes = [Image.open(p).size for p in made]
    assert len(made) == 3 and sizes[0] == (128, 96) and sizes[1] == (96, 128)


def test_every_carried_module_has_one_pinned_wheel() -> None:
    pins = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheels.sh"), "--list"], capture_output=True,
                          text=True, check=True).stdout.split()
    names = [pin.split("==")[0] for pin in pins]
    assert len(names) == len(set(names)), "two versions of one package stop the install there"
    assert all("==" in pin for pin in pins)
    assert set(gpu_suite.CARRIED_MODULES.values()) <= set(names)


def test_the_guard_hides_what_the_gpu_machine_lacks(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "tenacity").mkdir(parents=True)
    (site / "tenacity" / "__init__.py").write_text("CARRIED = True\n")
    guard = gpu_suite.write_guard(site, tmp_path / "guard").parent
    code = ("import tenacity; assert tenacity.CARRIED\n"
            "try:\n    import diffusers\nexcept ModuleNotFoundError as exc:\n    print(exc)\n"
            "import json; print('json ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": f"{guard}:{site}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "'diffusers' on the GPU machine (not in the carried wheels)" in done.stdout
    assert "json ok" in done.stdout


def test_overlap_with_the_real_sd_stage_on_the_local_store(capsys) -> None:
    pytest.importorskip("diffusers")
    from bench import overlap

    results = overlap.main(["--stage", "sd", "--tiny", "--store", "local", "--device", "cpu", "--items", "2",
                            "--size", "128", "--skip-naive", "--json"])
    assert results["items"] == 2 and results["store"] == "local"
    assert results["stage"].startswith("sd (modern-disney") and results["stage_ms"] > 0
    assert 0 < results["processor_ratio"] <= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["variants"] == results["variants"]


def test_the_steps_before_the_optional_ones_fit_the_budget_at_their_limits() -> None:
    """Each step runs under its own limit; the ones the README and the goals need, the fast style
    and the gpu tests must all fit the call's budget even when every one uses its whole limit, so
    only the optional steps (captions, overlap, torch.compile) can be skipped for time."""
    names = [s.name for s in gpu_suite.STEPS]
    essential = names[:names.index("pytest-gpu") + 1]
    assert {"env", "build", "real-run", "img2img-fp16", "img2img-bf16", "styles-fp16"} <= set(essential)
    total = sum(s.budget_s for s in gpu_suite.STEPS if s.name in essential)
    assert total + gpu_suite.RESERVE_S <= gpu_suite.DEFAULT_BUDGET_S, total
    assert names[-2:] == ["img2img-bf16-compile", "img2img-fp16-compile"]


def test_the_fast_and_canny_styles_are_timed_against_modern_disney(capsys) -> None:
    pytest.importorskip("diffusers")
    pytest.importorskip("cv2")
    from bench import gpu_styles

    # No warm-up input: on the CPU it only doubles the work (the counts are per timed input either way).
    results = gpu_styles.main(["--tiny", "--device", "cpu", "--images", "1", "--warmups", "0", "--json"])
    # config.yaml's schedules: 4 rounds of 30 steps with CFG for 5 variants, against one LCM round
    # of 4 steps at guidance 1; the canny style is modern-disney's UNet work plus the ControlNet.
    assert results["modern_disney_unet_evaluations_per_input"] == 660
    assert results["fast_unet_evaluations_per_input"] == 20
    assert results["canny_unet_evaluations_per_input"] == 660
    assert results["ratio_modern_disney_over_fast_unet_evaluations"] == 33
    # Every module the random LCM-LoRA adapts (attention included) carries it after loading.
    assert results["fast_lcm_lora_modules"] > 40
    for slug in ("modern_disney", "fast", "canny"):
        assert results[f"{slug}_images_per_s"] > 0 and results[f"{slug}_variants"] == 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fast_variants"] == 5

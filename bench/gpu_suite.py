"""The GPU check in one call: every GPU benchmark and test, each in its own process with its own
time budget, a failing step never stopping the rest, and every result written to files.

A CUDA machine is lent in short slots (one call of a few minutes), so the whole check is prepared
and rehearsed beforehand: ``--tiny`` runs every step small on the CPU with the tiny test models.
``bench/gpu_suite.sh`` is the entry point on the machine (it installs the carried wheels first).

    python -m bench.gpu_suite photos                    # fill .gpu-photos/ (here, before the call)
    python -m bench.gpu_suite run --out DIR             # the real run, on a CUDA machine
    python -m bench.gpu_suite run --tiny --out DIR      # the rehearsal on the CPU
    python -m bench.gpu_suite run --list                # the steps, their budgets and commands

Written under ``--out`` (at most 8 files, flat, so a device call returns them all):
``summary.md`` (steps, figures, goals), ``summary.json`` (the same, typed), ``steps.log`` (every
step's command and output) and ``profile.txt`` (torch.profiler tables of the bf16 run). The
summary is rewritten after every step, so a call cut short still returns what finished.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Seconds the whole run may take (the device call allows 8 minutes for the suite, wheels included).
DEFAULT_BUDGET_S = 430
#: Seconds the CPU rehearsal may take (two shared cores; every step small).
TINY_BUDGET_S = 1500
#: Seconds kept back at the end for the summary; a step is not started with less than MIN_STEP_S.
RESERVE_S, MIN_STEP_S = 5, 10
#: Seconds ``timeout`` waits after SIGTERM before SIGKILL.
KILL_AFTER_S = 10
#: Photos for the real run: the README's real run uses six.
PHOTO_COUNT = 6
#: Pixels: the long side the photos are downscaled to (a few hundred KB as JPEG, quality below).
PHOTO_SIDE, PHOTO_QUALITY = 1024, 85
PHOTO_DIR = ".gpu-photos"
PHOTO_SOURCE = "../shared/toys"
#: Bytes of one step's output kept in steps.log (head and tail beyond that).
LOG_KEEP_BYTES = 256 * 1024
#: Goals (issue 20): UNet FLOP/s at least this fraction of the bf16 matmul peak; the processor at
#: least this many times the notebook's images/s on the same schedule and steps.
GOAL_PEAK_FRACTION, GOAL_OVER_NOTEBOOK = 0.4, 2.0
#: The fast style must need at least this many times fewer UNet evaluations than modern-disney
#: (bench.unet_evals --min-ratio, as CI checks it).
FAST_MIN_RATIO = 8

#: Import names the GPU machine lacks (the project's environment minus that machine's package
#: list), with the wheel that brings each (scripts/gpu_wheels.sh); ``check`` fails when one does
#: not import.
CARRIED_MODULES = {
    "pydantic": "pydantic", "pydantic_core": "pydantic-core", "pydantic_settings": "pydantic-settings",
    "annotated_types": "annotated-types", "typing_inspection": "typing-inspection", "dotenv": "python-dotenv",
    "diffusers": "diffusers", "tenacity": "tenacity", "pillow_heif": "pillow-heif", "open_clip": "open-clip-torch",
    "clip_interrogator": "clip-interrogator", "ftfy": "ftfy", "wcwidth": "wcwidth", "boto3": "boto3",
    "botocore": "botocore", "s3transfer": "s3transfer", "jmespath": "jmespath",
    "PIL": "pillow",  # there, but maybe older than pillow-heif needs: the tested version is carried
    # processor serve, for bench.api (the api-sd step)
    "fastapi": "fastapi", "starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
    "multipart": "python-multipart", "watchdog": "watchdog", "standardwebhooks": "standardwebhooks",
    "opentelemetry": "opentelemetry-api",
}
#: What the steps import from the machine itself (it has them: listed to fail early if not).
PRESENT_MODULES = ("torch", "transformers", "accelerate", "peft", "safetensors", "huggingface_hub", "cv2",
                   "numpy", "yaml", "tqdm", "prometheus_client", "pytest", "torchvision", "timm", "regex")
#: The project's modules the steps import (each pulls its own dependencies).
PROJECT_MODULES = ("processor.cli.main", "processor.pipeline.img2img", "processor.pipeline.interrogator",
                   "processor.pipeline.caption", "processor.store.local", "processor.store.s3", "bench.gpu_img2img",
                   "bench.real_run", "bench.overlap", "bench.gpu_styles", "bench.gpu_video", "bench.unet_evals",
                   "bench.api", "processor.api.app",
                   "testkit.models.sd",
                   "tests.models.conftest", "tests.conftest")
#: Modules the GPU machine lacks that no step may need (the IBM store adapter, the OpenAPI
#: validator of the tests); the guard hides them too, so a step that starts needing one fails the
#: rehearsal. (Not httpx2 / httpcore2: only this environment's newer huggingface-hub needs them,
#: and the GPU machine has its own huggingface-hub.)
ABSENT_MODULES = ("ibm_boto3", "ibm_botocore", "ibm_s3transfer", "importlib_metadata", "jsonschema", "referencing",
                  "rpds")


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Plan:
    """Where a run reads and writes, and whether it is the CPU rehearsal."""

    tiny: bool
    out: Path
    work: Path
    photos: Path
    python: str = sys.executable

    @property
    def model(self) -> Path:
        return self.work / ("tiny-sd" if self.tiny else "sd15-random")


@dataclass(frozen=True)
class Step:
    """One command of the suite. ``argv`` builds it for a plan; ``parse`` turns its stdout into
    figures; ``keys`` are the figures the summary shows."""

    name: str
    budget_s: int
    tiny_budget_s: int
    argv: Callable[[Plan], list[str]]
    what: str
    parse: str = "json"  # json: the last stdout line that is a JSON object; pytest: the counts line
    keys: tuple[str, ...] = ()


@dataclass
class StepResult:
    name: str
    what: str
    command: str
    status: Status
    rc: int | None
    seconds: float
    budget_s: int
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Goal:
    name: str
    figure: str
    value: float | None
    target: str
    met: bool | None
    source: str


# --------------------------------------------------------------------------- the steps


def _py(plan: Plan, *args: str) -> list[str]:
    return [plan.python, *args]


def _model(plan: Plan) -> list[str]:
    """``--model`` when the build step made one (else the step builds its own)."""
    return ["--model", str(plan.model)] if (plan.model / "model_index.json").exists() else []


def gpu_test_files() -> list[str]:
    """Test files with a ``gpu`` mark: only those are collected (the others may import what the
    GPU machine lacks, and collecting them would cost time)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def _img2img(dtype: str, *extra: str, profile: bool = False) -> Callable[[Plan], list[str]]:
    def argv(plan: Plan) -> list[str]:
        cmd = _py(plan, "-m", "bench.gpu_img2img", *_model(plan), "--json", "--dtype", dtype, *extra)
        if plan.tiny:  # the same switches and dtype (both run on the CPU, slowly), small work
            cmd += ["--tiny", "--device", "cpu", "--steps", "4", "--images", "1", "--variants", "2"]
        if profile:
            cmd += ["--profile", str(plan.out / "profile.txt")]
        return cmd

    return argv


IMG2IMG_KEYS = ("processor_images_per_s", "notebook_images_per_s", "ratio_processor_over_notebook",
                "shared_images_per_s", "ratio_shared_over_notebook", "ratio_shared_over_unshared",
                "processor_unet_fraction_of_peak", "unet_alone_fraction_of_peak", "bf16_matmul_peak_tflops",
                "processor_unet_tflops", "unet_alone_tflops", "processor_s_per_input", "processor_switches",
                "batched_images_per_s", "ratio_batched_over_alone", "batched_unet_fraction_of_peak")

STYLES_KEYS = ("modern_disney_images_per_s", "modern_disney_s_per_input", "fast_images_per_s", "fast_s_per_input",
               "canny_images_per_s", "canny_s_per_input", "ratio_fast_over_modern_disney_images_per_s",
               "ratio_canny_over_modern_disney_images_per_s", "modern_disney_unet_evaluations_per_input",
               "fast_unet_evaluations_per_input", "fast_lcm_lora_modules", "modern_disney_gpu_peak_allocated_gib",
               "fast_gpu_peak_allocated_gib", "canny_gpu_peak_allocated_gib")

API_KEYS = ("prototype_images_per_s", "queue_images_per_s", "queue_over_prototype_images_per_s", "prototype_p50_s",
            "queue_p50_s", "prototype_p99_s", "queue_p99_s", "breakdown_scan_wait_s", "breakdown_compute_s",
            "breakdown_api_notice_s", "queue_cpu_s_per_job_api", "queue_cpu_s_per_job_worker")

VIDEO_KEYS = ("s_per_clip", "s_per_frame", "frames", "size", "steps", "unet_calls_per_clip",
              "unet_evaluations_per_clip", "gpu_peak_allocated_gib", "mp4_encode_s", "build_s")

#: In order of importance: when the budget runs out, the last ones are skipped (the summary says
#: which; ``--only`` reruns them). The README's figures and the two goals come first, then the
#: fast and canny styles, the tests, the front door against the prototype, inputs batched in one
#: call, an animate clip, the caption tables, the overlap; the torch.compile steps last.
#: The notebook runs in float16 only (img2img-fp16): the goals compare the other steps with it.
STEPS: tuple[Step, ...] = (
    Step("env", 40, 150, lambda p: _py(p, "-m", "bench.gpu_suite", "check"),
         "imports, versions, the device, and bench.unet_evals (UNet evaluations per style, counted)",
         keys=("device", "nvidia_smi", "python", "torch", "cuda", "missing", "unet_evals", "versions")),
    Step("build", 45, 120, lambda p: _py(p, "-m", "bench.gpu_suite", "build", "--into", str(p.work))
         + (["--tiny"] if p.tiny else []),
         "the SD 1.5 architecture with random weights, saved once for every step", keys=("seconds", "model")),
    Step("real-run", 90, 240, lambda p: _py(p, "-m", "bench.real_run", *_model(p), "--photos", str(p.photos), "--json")
         + (["--tiny", "--images", "2", "--device", "cpu"] if p.tiny else ["--images", str(PHOTO_COUNT)]),
         "processor run --once --style modern-disney on the photos",
         keys=("first_image_s", "s_per_image", "gpu_peak_allocated_gib", "gpu_peak_reserved_gib",
               "gpu_peak_nvidia_smi_gib", "median_style:modern-disney_s", "wall_s", "images", "size_used")),
    Step("img2img-fp16", 75, 240, _img2img("float16", "--shared-rounds", "3"),
         "processor vs notebook, float16, and shared_rounds 3 (the notebook's work)", keys=IMG2IMG_KEYS),
    Step("img2img-bf16", 60, 200, _img2img("bfloat16", "--skip-notebook", profile=True),
         "the processor in bfloat16 (vs img2img-fp16's notebook), with torch.profiler tables", keys=IMG2IMG_KEYS),
    Step("styles-fp16", 70, 200, lambda p: _py(p, "-m", "bench.gpu_styles", *_model(p), "--json", "--dtype", "float16")
         + (["--tiny", "--device", "cpu", "--images", "1"] if p.tiny else []),
         "modern-disney vs modern-disney-fast (LCM-LoRA) vs modern-disney + canny ControlNet, float16",
         keys=STYLES_KEYS),
    Step("pytest-gpu", 45, 180, lambda p: _py(p, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                              *gpu_test_files()),
         "the gpu-marked tests", parse="pytest", keys=("passed", "failed", "skipped", "errors")),
    Step("api-sd", 120, 300, lambda p: _py(p, "-m", "bench.api", "--store", "none", "--style", "sd", *_model(p),
                                          "--batch-inputs", "4", "--json")
         + (["--e2e", "4", "--clients", "2", "--variants", "1", "--side", "96", "--sd-steps", "3", "--sd-size", "64"]
            if p.tiny else ["--e2e", "32", "--variants", "2", "--side", "512", "--sd-steps", "20", "--sd-size", "512"]),
         "the front door: the prototype's synchronous handler against processor serve and one worker "
         "(run.batch_inputs: 4), SD 1.5 at 512 px, 8 clients", keys=API_KEYS),
    Step("img2img-batch", 70, 200, _img2img("float16", "--skip-notebook", "--batch-inputs", "4", "--images", "1"),
         "the processor in float16: 4 inputs in one call (run.batch_inputs: 4) against one input per call",
         keys=IMG2IMG_KEYS),
    Step("animate-svd", 90, 150, lambda p: _py(p, "-m", "bench.gpu_video", "--json")
         + (["--tiny", "--device", "cpu", "--clips", "1"] if p.tiny else []),
         "engine: animate: a 14-frame Stable Video Diffusion clip at 1024x576, 25 steps (random full-size weights)",
         keys=VIDEO_KEYS),
    Step("caption-tables", 30, 180, lambda p: _py(p, "-m", "bench.caption_tables", "--json")
         + (["--device", "cpu", "--labels", "64", "--arch", "ViT-B-32"] if p.tiny else
            ["--device", "cuda", "--labels", "20000"]),
         "label tables: computing them on the device vs reading them from the cache",
         keys=("labels_per_s", "full_compute_s", "cache_read_s", "ratio_compute_over_read")),
    Step("overlap-sd", 60, 240, lambda p: _py(p, "-m", "bench.overlap", "--stage", "sd", "--store", "local",
                                              *_model(p), "--json")
         + (["--tiny", "--device", "cpu", "--items", "3", "--size", "256"] if p.tiny else
            ["--items", "8", "--size", "1024"]),
         "worker vs naive loop with the real img2img stage (local store)",
         keys=("processor_ratio", "naive_ratio", "stage_ms", "speedup_processor_over_naive",
               "processor_fetch_ms_median", "processor_upload_ms_median")),
    Step("img2img-bf16-compile", 150, 400, _img2img("bfloat16", "--compile", "--skip-notebook"),
         "the processor in bfloat16 with torch.compile of the UNet", keys=IMG2IMG_KEYS),
    Step("img2img-fp16-compile", 120, 400, _img2img("float16", "--compile", "--skip-notebook"),
         "the processor in float16 with torch.compile of the UNet", keys=IMG2IMG_KEYS),
)


# --------------------------------------------------------------------------- running


def parse_output(step: Step, stdout: str) -> dict[str, Any]:
    if step.parse == "pytest":
        counts: dict[str, Any] = {}
        for line in reversed(stdout.splitlines()):
            found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
            if found:
                for n, what in found:
                    counts["errors" if what.startswith("error") else what] = int(n)
                break
        return counts
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def step_env() -> dict[str, str]:
    """The steps' environment: offline (the machine cannot download; a connection attempt must fail
    at once, not hang), unbuffered, no progress bars in the log."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_step(step: Step, plan: Plan, limit_s: int, log: Path) -> StepResult:
    """Runs one step under ``timeout`` (SIGTERM, then SIGKILL), appending its output to ``log``."""
    argv = step.argv(plan)
    command = shlex.join(argv)
    cmd = ["timeout", f"--kill-after={KILL_AFTER_S}", str(limit_s), *argv]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=step_env(), capture_output=True, text=True, errors="replace",
                              timeout=limit_s + KILL_AFTER_S + 5, check=False)
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:  # `timeout` itself did not return: should not happen
        rc = 124
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    seconds = time.perf_counter() - started
    status = Status.OK if rc == 0 else Status.TIMEOUT if rc in (124, 137) else Status.FAILED
    figures = parse_output(step, stdout)
    note = "" if status is Status.OK else last_error(stderr or stdout)
    if step.parse == "pytest" and figures.get("skipped") and not plan.tiny:
        note = f"{figures['skipped']} gpu tests skipped: did they see CUDA? (steps.log has the reasons)"
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n===== {step.name}: {status.value} (rc {rc}) in {seconds:.1f} s of {limit_s} s\n$ {command}\n")
        fh.write("----- stdout\n" + clip(stdout) + "\n----- stderr\n" + clip(stderr) + "\n")
    return StepResult(step.name, step.what, command, status, rc, round(seconds, 1), limit_s, figures, note)


def clip(text: str) -> str:
    data = text.encode()
    if len(data) <= LOG_KEEP_BYTES:
        return text
    half = LOG_KEEP_BYTES // 2
    return (data[:half].decode(errors="replace") + f"\n[... {len(data) - LOG_KEEP_BYTES} bytes left out ...]\n"
            + data[-half:].decode(errors="replace"))


def last_error(text: str) -> str:
    """The last non-empty line of a failed step's output (usually the exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def select(only: str | None, skip: str | None) -> list[Step]:
    names = [s.name for s in STEPS]
    for given in (only, skip):
        for name in (given or "").split(","):
            if name and name not in names:
                raise SystemExit(f"unknown step {name!r}; the steps are: {', '.join(names)}")
    wanted = set((only or ",".join(names)).split(",")) - set((skip or "").split(","))
    return [s for s in STEPS if s.name in wanted]


def run_suite(plan: Plan, steps: Sequence[Step], budget_s: float,
              clock: Callable[[], float] = time.perf_counter) -> list[StepResult]:
    """Every step in order, each under ``min(its budget, what is left)``; the summary is rewritten
    after each one."""
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.work.mkdir(parents=True, exist_ok=True)
    log = plan.out / "steps.log"
    log.write_text(f"gpu suite, {'tiny (CPU rehearsal)' if plan.tiny else 'GPU'} mode, "
                   f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S UTC}\n", encoding="utf-8")
    deadline = clock() + budget_s
    started = datetime.now(timezone.utc)
    results: list[StepResult] = []
    for step in steps:
        left = int(deadline - clock() - RESERVE_S)
        own = step.tiny_budget_s if plan.tiny else step.budget_s
        if left < MIN_STEP_S:
            results.append(StepResult(step.name, step.what, shlex.join(step.argv(plan)), Status.SKIPPED, None, 0.0,
                                      own, note=f"out of time: {max(left, 0)} s left of the {budget_s:.0f} s budget"))
        else:
            results.append(run_step(step, plan, min(own, left), log))
        write_summary(plan, results, started, budget_s)
    return results


# --------------------------------------------------------------------------- the summary


def goals(results: Sequence[StepResult]) -> list[Goal]:
    """The issue's two goals, read from the img2img steps of this run."""
    by_name = {r.name: r.figures for r in results}
    found: list[Goal] = []
    for name in ("img2img-bf16", "img2img-bf16-compile", "img2img-fp16", "img2img-fp16-compile"):
        figures = by_name.get(name) or {}
        for key in ("processor_unet_fraction_of_peak", "unet_alone_fraction_of_peak"):
            value = figures.get(key)
            if value is not None:
                found.append(Goal(f"UNet >= {GOAL_PEAK_FRACTION:.0%} of the bf16 peak", key, value,
                                  f">= {GOAL_PEAK_FRACTION}", value >= GOAL_PEAK_FRACTION, name))
    # Against the notebook: in the same process where the step timed it, else against the
    # float16 step's notebook figure (the notebook always runs in float16).
    notebook = (by_name.get("img2img-fp16") or {}).get("notebook_images_per_s")
    for name in ("img2img-fp16", "img2img-bf16", "img2img-bf16-compile", "img2img-fp16-compile"):
        figures = by_name.get(name) or {}
        if "ratio_processor_over_notebook" in figures:
            value, source = figures["ratio_processor_over_notebook"], name
        elif figures.get("processor_images_per_s") and notebook:
            value, source = figures["processor_images_per_s"] / notebook, f"{name} / img2img-fp16's notebook"
        else:
            continue
        found.append(Goal(f"processor >= {GOAL_OVER_NOTEBOOK:g}x the notebook", "processor / notebook images/s",
                          value, f">= {GOAL_OVER_NOTEBOOK:g}", value >= GOAL_OVER_NOTEBOOK, source))
        if "ratio_shared_over_notebook" in figures:
            value = figures["ratio_shared_over_notebook"]
            found.append(Goal(f"processor >= {GOAL_OVER_NOTEBOOK:g}x the notebook (same UNet work)",
                              "ratio_shared_over_notebook (shared_rounds 3)", value, f">= {GOAL_OVER_NOTEBOOK:g}",
                              value >= GOAL_OVER_NOTEBOOK, name))
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(plan: Plan, results: Sequence[StepResult], started: datetime, budget_s: float) -> None:
    achieved = goals(results)
    data = {
        "mode": "tiny" if plan.tiny else "gpu",
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "budget_s": budget_s,
        "seconds": round(sum(r.seconds for r in results), 1),
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "steps": [asdict(r) | {"status": r.status.value} for r in results],
        "goals": [asdict(g) for g in achieved],
    }
    (plan.out / "summary.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    keys = {s.name: s.keys for s in STEPS}
    lines = [f"# GPU suite ({data['mode']}), {data['started']}", "",
             f"{len(results)} steps in {data['seconds']} s (budget {budget_s:.0f} s)."
             + (" Tiny models on the CPU: the figures say nothing about a GPU." if plan.tiny else ""), "",
             "| step | status | seconds / limit | what |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status.value}{f' (rc {r.rc})' if r.rc not in (0, None) else ''} | "
                     f"{r.seconds:.0f} / {r.budget_s} | {r.what} |")
    lines += ["", "## Goals", ""]
    if achieved:
        lines += ["| goal | figure | value | target | met | from |", "|---|---|---|---|---|---|"]
        lines += [f"| {g.name} | {g.figure} | {_fmt(g.value)} | {g.target} | {'yes' if g.met else 'NO'} | {g.source} |"
                  for g in achieved]
    else:
        lines.append("No img2img step reported figures.")
    lines += ["", "## Figures", ""]
    for r in results:
        lines += [f"### {r.name}", "", f"`{r.command}`", ""]
        if r.note:
            lines += [f"{r.status.value}: {r.note}", ""]
        shown = [(k, r.figures[k]) for k in keys.get(r.name, ()) if k in r.figures]
        lines += [f"- {k}: {_fmt(v)}" for k, v in shown] + ([""] if shown else [])
    (plan.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- sub-commands


def check() -> int:
    """Imports every module the steps need and prints one JSON object: versions, the device, and
    what failed to import (exit 1 if anything did)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    missing: dict[str, str] = {}
    for name in (*PRESENT_MODULES, *CARRIED_MODULES, *PROJECT_MODULES):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure, whatever its type
            missing[name] = f"{type(exc).__name__}: {exc}"[:300]
    versions = {}
    for dist in ("torch", "transformers", "huggingface-hub", "tokenizers", "accelerate", "peft", "safetensors",
                 "pillow", "numpy", "opencv-python-headless", "pytest", *sorted(set(CARRIED_MODULES.values()))):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    result: dict[str, Any] = {"python": platform.python_version(), "missing": missing or "none", "versions": versions}
    try:
        import torch

        result |= {"torch": torch.__version__, "cuda": torch.version.cuda, "device": (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")}
    except Exception as exc:  # noqa: BLE001
        result["device"] = f"torch failed: {exc}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        result["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired):
        result["nvidia_smi"] = "not available"
    result["unet_evals"] = unet_evals() if not missing else "not run: imports failed"
    print(json.dumps(result))
    return 1 if missing or not isinstance(result["unet_evals"], dict) else 0


def unet_evals() -> dict[str, Any] | str:
    """UNet evaluations per input of every shipped diffusion style (``bench.unet_evals``, tiny
    models: the counts do not depend on the hardware), run on the GPU machine's own diffusers and
    peft (the fast style loads its LCM-LoRA through peft) to show they give CI's counts: per style
    the count, or why it failed. Its table goes to stderr (steps.log)."""
    import contextlib
    import io

    from bench import unet_evals as evals

    table = io.StringIO()
    try:
        with contextlib.redirect_stdout(table):  # the step's stdout ends with check's one JSON line
            rows = evals.main(["--fast", "modern-disney-fast", "--min-ratio", str(FAST_MIN_RATIO)])
    except SystemExit as exc:
        return f"failed: modern-disney-fast is not {FAST_MIN_RATIO}x cheaper ({exc.code})"
    except Exception as exc:  # noqa: BLE001 - a broken style is a finding, not a crash of the env step
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    finally:
        print(table.getvalue(), file=sys.stderr)
    return {name: row["unet_evaluations"] for name, row in rows.items()}


def build(into: Path, tiny: bool) -> int:
    """Builds the random-weight model every model step reuses (one build instead of six)."""
    started = time.perf_counter()
    into.mkdir(parents=True, exist_ok=True)
    if tiny:
        from testkit.models.sd import build_sd

        model = build_sd(into / "tiny-sd")
    else:
        from bench.gpu_img2img import build_sd15

        model = build_sd15(into / "sd15-random", "cuda")
    print(json.dumps({"model": str(model), "seconds": time.perf_counter() - started}))
    return 0


def prepare_photos(source: Path, into: Path, count: int, side: int = PHOTO_SIDE) -> list[Path]:
    """``count`` photos in ``into``: from ``source`` (sorted, cycled if short, EXIF-rotated and
    downscaled to ``side`` px JPEGs) or, when ``source`` has none, synthetic ones."""
    from PIL import Image, ImageOps

    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*.jpg"):
        old.unlink()
    suffixes = (".jpg", ".jpeg", ".png", ".webp")
    found = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes) if source.is_dir() else []
    made = []
    for i in range(count):
        path = into / f"{i:03d}-toy.jpg"
        if found:
            with Image.open(found[i % len(found)]) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
            image.thumbnail((side, side))
            image.save(path, "JPEG", quality=PHOTO_QUALITY)
        else:
            from testkit.images import photo_bytes

            width, height = (side, side * 3 // 4) if i % 2 == 0 else (side * 3 // 4, side)
            path.write_bytes(photo_bytes(width, height, seed=i))
        made.append(path)
    return made


def write_guard(site: Path, into: Path) -> Path:
    """A ``sitecustomize.py`` that makes this environment look like the GPU machine: the modules
    that machine lacks import only from ``site`` (where the carried wheels were installed), or
    fail. Compiled modules built for another Python than this one come from this environment."""
    into.mkdir(parents=True, exist_ok=True)
    # A cp312 extension does not load on another Python: take this environment's build of the
    # same pinned version for those (the pure-Python rest still comes from the wheels).
    compiled = sorted({p.relative_to(site).parts[0].split(".")[0] for p in site.rglob("*.cpython-312*.so")})
    blocked = sorted({*CARRIED_MODULES, *ABSENT_MODULES})
    text = f'''"""Written by bench.gpu_suite guard: hides what the GPU machine lacks (the rehearsal)."""
import sys
from importlib.machinery import PathFinder

_SITE = {str(site)!r}
_BLOCKED = set({blocked!r})
_OTHER_PYTHON = sys.version_info[:2] != (3, 12)
_COMPILED = set({compiled!r}) if _OTHER_PYTHON else set()


class _GpuMachineGuard:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is not None or top not in _BLOCKED:
            return None
        if top in _COMPILED:  # built for Python 3.12: this environment's build of the same version
            return PathFinder.find_spec(name, [p for p in sys.path if p != _SITE])
        spec = PathFinder.find_spec(name, [_SITE])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}} on the GPU machine (not in the carried wheels)",
                                      name=name)
        return spec


sys.meta_path.insert(0, _GpuMachineGuard())
'''
    path = into / "sitecustomize.py"
    path.write_text(text, encoding="utf-8")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the steps, write summary.md / summary.json / steps.log under --out")
    run.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_SUITE_TINY") == "1",
                     help="the CPU rehearsal: tiny models, every step small (also GPU_SUITE_TINY=1)")
    run.add_argument("--out", type=Path, default=None,
                     help="where results go (default $OUT when set, else .gpu-suite-out/)")
    run.add_argument("--work", type=Path, default=None,
                     help="scratch space for the model (default a folder under the system temp; not returned)")
    run.add_argument(
        "--photos", type=Path, default=ROOT / PHOTO_DIR, help=f"photos for the real run (default {PHOTO_DIR}/)"
    )
    run.add_argument("--budget", type=float, default=None,
                     help=f"seconds for all steps (default {DEFAULT_BUDGET_S}; --tiny {TINY_BUDGET_S})")
    run.add_argument("--only", metavar="A,B", help="run only these steps (a rerun of the ones that failed)")
    run.add_argument("--skip", metavar="A,B", help="leave these steps out")
    run.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    photos = sub.add_parser("photos", help=f"fill {PHOTO_DIR}/ with downscaled photos (synthetic without a source)")
    photos.add_argument("--from", dest="source", type=Path, default=ROOT / PHOTO_SOURCE,
                        help=f"a folder of photos (default {PHOTO_SOURCE}); synthetic photos when it has none")
    photos.add_argument("--into", type=Path, default=ROOT / PHOTO_DIR)
    photos.add_argument("--count", type=int, default=PHOTO_COUNT)
    sub.add_parser("check", help="import what the steps need; print versions and the device (JSON)")
    built = sub.add_parser("build", help="build the random-weight model the steps share")
    built.add_argument("--into", type=Path, required=True)
    built.add_argument("--tiny", action="store_true")
    guard = sub.add_parser("guard", help="write a sitecustomize.py hiding what the GPU machine lacks (rehearsal)")
    guard.add_argument("--site", type=Path, required=True, help="where the carried wheels were installed")
    guard.add_argument("--into", type=Path, required=True, help="folder to put first on PYTHONPATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check()
    if args.command == "build":
        return build(args.into, args.tiny)
    if args.command == "guard":
        print(write_guard(args.site, args.into))
        return 0
    if args.command == "photos":
        made = prepare_photos(args.source, args.into, args.count)
        total = sum(p.stat().st_size for p in made)
        kind = "from " + str(args.source) if args.source.is_dir() and any(args.source.iterdir()) else "synthetic"
        print(f"{len(made)} photos ({kind}) in {args.into}, {total / 1e6:.1f} MB")
        return 0
    out = args.out or Path(os.environ.get("OUT") or ROOT / ".gpu-suite-out")
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-suite-work"
    plan = Plan(tiny=args.tiny, out=out.resolve(), work=work.resolve(), photos=args.photos.resolve())
    steps = select(args.only, args.skip)
    budget = args.budget or (TINY_BUDGET_S if plan.tiny else DEFAULT_BUDGET_S)
    if args.list:
        for step in steps:
            own = step.tiny_budget_s if plan.tiny else step.budget_s
            print(f"{step.name:<22} {own:>4} s  {shlex.join(step.argv(plan))}")
        return 0
    if not plan.photos.is_dir() or not any(plan.photos.glob("*.jpg")):
        # The one GPU slot must not be lost to a missing folder: synthetic photos, said loudly.
        fallback = plan.work / "synthetic-photos"
        prepare_photos(fallback / "absent", fallback, PHOTO_COUNT)
        print(f"warning: no photos in {plan.photos} (python -m bench.gpu_suite photos): using synthetic ones",
              file=sys.stderr)
        plan = replace(plan, photos=fallback)
    results = run_suite(plan, steps, budget)
    for r in results:
        print(f"{r.name:<22} {r.status.value:<8} {r.seconds:7.1f} s  {r.note}")
    print(f"summary: {plan.out / 'summary.md'}")
    return 0 if all(r.status is Status.OK for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The README's real run, on the weights a machine without Hub access can have.

``processor run --once --style modern-disney`` through the CLI, with the shipped ``config.yaml``
unchanged except for three keys:

- ``styles.modern-disney.model``: a local folder with the SD 1.5 architecture (the architecture of
  ``nitrosocke/mo-di-diffusion``) and random weights, built here. Speed and memory do not depend on
  weight values; the pictures do, so look at them only with real weights.
- ``caption.mode: none``: the caption models cannot be fetched either. ``bench/caption_tables.py``
  measures the captioner's cost.
- ``store``: a local directory bucket in a temporary folder; ``metrics.port: 0``.

Everything else is the shipped style: rounds, steps, scheduler, variants and size, read from
``config.yaml`` and printed with the figures.

Printed:
- the weights' size in float32 and float16 safetensors. The Hub repo's own files are what
  ``processor models pull --dry-run`` lists.
- seconds to the first committed image (model load and warm-up included), and steady-state
  seconds per image (the spacing of the later commits);
- per-stage medians from the manifests;
- peak GPU memory: PyTorch's allocated and reserved peaks, and the device's own view
  (``nvidia-smi``, sampled).

    python -m bench.real_run --photos ../shared/toys --images 6     # a CUDA machine
    python -m bench.real_run --tiny --images 2                      # anywhere (the CI smoke test)
    python -m bench.real_run --weights-only                         # what SD 1.5 weighs (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import MIB, machine, report

STYLE = "modern-disney"
#: Photo suffixes taken from --photos.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Seconds between nvidia-smi memory samples.
SMI_SAMPLE_S = 0.5
#: Synthetic photo sizes used without --photos: both orientations, like users' phones.
SYNTHETIC_SIZES = ((640, 480), (480, 640))
GIB = 1024**3


def weights_bytes(model: Path) -> dict[str, float]:
    """Parameters and their size in float32 and float16, read from the folder's safetensors headers."""
    from safetensors import safe_open

    params = 0
    for path in sorted(model.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                shape = fh.get_slice(name).get_shape()
                count = 1
                for side in shape:
                    count *= side
                params += count
    return weight_sizes(params)


def weight_sizes(params: int) -> dict[str, float]:
    """``params`` parameters in millions, and their bytes in float32 and float16 (GiB)."""
    return {"weights_params_millions": params / 1e6, "weights_float32_gib": params * 4 / GIB,
            "weights_float16_gib": params * 2 / GIB}


def sd15_parameters() -> dict[str, float]:
    """The SD 1.5 architecture's parameters per component, counted on the meta device (nothing
    allocated, nothing downloaded), and the whole in float32 / float16 bytes."""
    from bench.gpu_img2img import sd15_modules

    unet, vae, text, _ = sd15_modules("meta")
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text))}
    return {f"{name}_params_millions": n / 1e6 for name, n in counts.items()} | weight_sizes(sum(counts.values()))


def photos(source: str | None, count: int, into: Path) -> list[Path]:
    """``count`` photos copied from ``source`` (sorted, cycled if short), else synthetic ones."""
    into.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    if source:
        found = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not found:
            raise SystemExit(f"--photos {source}: no {', '.join(PHOTO_SUFFIXES)} files there")
        for i in range(count):
            src = found[i % len(found)]
            made.append(Path(shutil.copy(src, into / f"{i:03d}-{src.name}")))
        return made
    from testkit.images import photo_bytes

    for i in range(count):
        width, height = SYNTHETIC_SIZES[i % len(SYNTHETIC_SIZES)]
        path = into / f"{i:03d}-toy.jpg"
        path.write_bytes(photo_bytes(width, height, seed=i))
        made.append(path)
    return made


def run_config(shipped: Path, model: Path, bucket: Path, device: str) -> dict[str, Any]:
    """The shipped config with the model, the captioner, the store and the metrics port replaced."""
    import yaml

    config = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    config["styles"][STYLE]["model"] = str(model)
    config["caption"]["mode"] = "none"
    config["store"] = {"kind": "local", "root": str(bucket)}
    config.setdefault("metrics", {})["port"] = 0
    config.setdefault("models", {})["device"] = device
    config["models"]["offline"] = True
    return config


class SmiSampler:
    """The GPU's used memory as ``nvidia-smi`` reports it (CUDA context and allocator slack
    included), sampled in a thread; a no-op without ``nvidia-smi``."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SmiSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, name="smi", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, check=False).stdout.strip()
            if out.isdigit():
                self.peak_mib = max(self.peak_mib or 0, int(out))
            self._stop.wait(SMI_SAMPLE_S)


def manifests(bucket: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((bucket / "outputs").rglob("manifest.json"))]


def stage_medians(found: list[dict[str, Any]]) -> dict[str, float]:
    stages: dict[str, list[float]] = {}
    for manifest in found:
        for stage, seconds in manifest.get("timings", {}).items():
            stages.setdefault(stage, []).append(seconds)
    return {f"median_{stage}_s": statistics.median(values) for stage, values in sorted(stages.items())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.real_run",
        description="The README's real run: `processor run --once --style modern-disney` on the shipped config, "
        "with an SD 1.5-architecture model of random weights (no Hub access needed) and captions off. Prints the "
        "weights' size, seconds to the first image and per image after it, per-stage medians, and peak GPU memory.",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny test configs on the CPU (the CI smoke test)")
    parser.add_argument("--model", metavar="DIR", help="a local diffusers SD 1.x folder instead of building one "
                        "(real weights give the same speed; the tests pass their tiny model)")
    parser.add_argument("--photos", metavar="DIR", help="photos to process (cycled to --images); default synthetic")
    parser.add_argument("--images", type=int, default=4, help="images to process (default 4; the first is warm-up)")
    parser.add_argument(
        "--config", default="config.yaml", help="the shipped config to start from (default config.yaml)"
    )
    parser.add_argument("--device", default="auto", help="models.device: auto (CUDA when present), cpu, cuda")
    parser.add_argument("--keep", metavar="DIR", help="copy the bucket (inputs, outputs, manifests) here afterwards")
    parser.add_argument("--weights-only", action="store_true",
                        help="print the SD 1.5 architecture's parameter counts and weight sizes, and stop "
                        "(counted on the meta device: no memory, no GPU, no download)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    import yaml

    from processor.cli.main import main as processor_main
    from processor.config import ModelSettings
    from processor.models.loader import ModelLoader

    args = build_parser().parse_args(argv)
    if args.weights_only:
        results = sd15_parameters()
        report(results, as_json=args.json)
        return results
    if args.images < 1:
        raise SystemExit("--images must be >= 1")
    device = ModelLoader(ModelSettings(device=args.device)).device()
    shipped = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))["styles"][STYLE]
    results: dict[str, Any] = {
        "style": STYLE,
        "shipped_model": shipped["model"],
        "run_model": args.model or ("tiny SD (test configs)" if args.tiny else "SD 1.5 architecture, random weights"),
        "rounds": " ".join(f"{r['strength']}/{r['guidance']}" for r in shipped["rounds"]),
        "steps": shipped["steps"], "scheduler": shipped["scheduler"], "variants": shipped["variants"],
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "images": args.images,
    }
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        if args.model:
            model = Path(args.model)
        elif args.tiny:
            from testkit.models.sd import build_sd

            model = build_sd(root / "tiny-sd")
        else:
            from bench.gpu_img2img import build_sd15

            model = build_sd15(root / "sd15-random", device)
        results["build_s"] = time.perf_counter() - started
        results |= weights_bytes(model)

        bucket = root / "bucket"
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(run_config(Path(args.config), model, bucket, device)), encoding="utf-8")
        photos(args.photos, args.images, bucket / "inputs")  # written straight into the bucket

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        wall_started = datetime.now().astimezone()
        with SmiSampler() as smi:
            began = time.perf_counter()
            code = processor_main(["run", "--once", "--style", STYLE, "--config", str(config), "--quiet",
                                   "--log-level", "WARNING"])
            results["wall_s"] = time.perf_counter() - began
        if code != 0:
            raise SystemExit(f"processor run exited {code}")
        found = manifests(bucket)
        if len(found) != args.images:
            raise SystemExit(f"{len(found)} manifests for {args.images} images")
        commits = sorted(datetime.fromisoformat(m["created_at"]) for m in found)
        results["first_image_s"] = (commits[0] - wall_started).total_seconds()
        if len(commits) > 1:
            results["s_per_image"] = (commits[-1] - commits[0]).total_seconds() / (len(commits) - 1)
        results["variants_made"] = sum(len(m["variants"]) for m in found)
        results["size_used"] = " ".join(sorted({f"{v['width']}x{v['height']}" for m in found for v in m["variants"]}))
        results |= stage_medians(found)
        if device.startswith("cuda"):
            results["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            results["gpu_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        if smi.peak_mib is not None:
            results["gpu_peak_nvidia_smi_gib"] = smi.peak_mib * MIB / GIB
        if args.keep:
            shutil.copytree(bucket, args.keep, dirs_exist_ok=True)
    results |= machine()
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

"""LoRA training speed and memory: ``processor finetune``'s trainer on the SD 1.5 architecture.

The SD 1.5 UNet, VAE and text encoder at full size with random weights (``bench.gpu_img2img``
builds them; speed and memory do not depend on weight values, nothing is downloaded) are trained
by ``processor.finetune.train.Trainer`` exactly as the command runs it: the LoRA on the UNet
attention projections, bf16 (fp16 without bf16) on CUDA, float32 on the CPU. Side by side in one
run: with gradient checkpointing (the command's CUDA default) and without, unless
``--gradient-checkpointing on|off`` picks one. For each, ``--warmup`` steps run untimed, then
``--steps`` are timed. Printed per configuration: seconds per 1000 steps, images per second and
the GPU's peak allocated memory (``torch.cuda.max_memory_allocated``); then the ratios on/off
and the process's peak RSS. ``--tiny`` trains the tiny test model at 64 px on the CPU in seconds
(the CI smoke test).

    python -m bench.finetune                          # a CUDA machine: 512 px, batch 1, checkpointing on and off
    python -m bench.finetune --batch 4 --resolution 768
    python -m bench.finetune --tiny                   # anywhere
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, peak_rss_bytes, report

DEFAULT_STEPS = 50
DEFAULT_WARMUP = 5
#: Pixels: SD 1.5's training resolution; the tiny model's native size.
FULL_SIZE, TINY_SIZE = 512, 64
#: Synthetic training photos (the step cost does not depend on how many).
IMAGES = 4
GIB = 1024**3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny test model at 64 px (CPU smoke run)")
    p.add_argument("--model", help="a diffusers folder to train on instead of the random SD 1.5 architecture")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"timed steps (default {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed steps first (default {DEFAULT_WARMUP})")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--resolution", type=int, help=f"pixels (default {FULL_SIZE}; --tiny {TINY_SIZE})")
    p.add_argument("--mixed-precision", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def time_training(model: Path, hp: Any, images: list[Any], models: Any, warmup: int, out_root: Path) -> dict[str, Any]:
    """Train ``hp.steps`` steps with the product's trainer; time the steps after ``warmup``."""
    import torch

    from processor.finetune.data import Dataset
    from processor.finetune.location import Location
    from processor.finetune.train import RunOptions, Trainer
    from processor.store.local import LocalStore

    cuda = models.device().startswith("cuda")
    marks: dict[int, float] = {}

    def on_step(done: int, _loss: float) -> None:
        if done in (warmup, hp.steps):
            if cuda:
                torch.cuda.synchronize()
            marks[done] = time.perf_counter()

    out = Location.of(LocalStore(out_root), "")
    options = RunOptions(checkpoint_every=hp.steps + 1, validation_images=1, validation_steps=0, on_step=on_step)
    trainer = Trainer("bench", str(model), None, hp, Dataset(images=images, source="synthetic"), out, options, models)
    trainer.setup()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    record = trainer.run().record
    seconds = marks[hp.steps] - marks.get(warmup, started)
    timed = hp.steps - warmup
    result = {"s_per_1000_steps": seconds / timed * 1000, "images_per_s": timed * hp.batch / seconds,
              "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
              "final_loss": record.loss[-1]}
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from processor.cli.finetune import _precision
    from processor.config import ModelSettings
    from processor.finetune.data import TrainingImage
    from processor.finetune.record import CaptionSource, Hyperparameters, Mode
    from processor.finetune.train import TARGET_MODULES
    from processor.models.loader import ModelLoader
    from testkit.images import photo_image

    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    models = ModelLoader(ModelSettings(device=args.device))
    device = models.device()
    size = args.resolution or (TINY_SIZE if args.tiny else FULL_SIZE)
    cuda = device.startswith("cuda")
    # Gradient checkpointing trades UNet compute for activation memory: time both in one run
    # unless one is asked for (the command's default is on for CUDA).
    checkpointing = {"on": [True], "off": [False]}.get(args.gradient_checkpointing, [True, False])
    base = Hyperparameters(
        mode=Mode.style, steps=args.warmup + args.steps, rank=args.rank, alpha=float(args.rank), lr=1e-4,
        batch=args.batch, resolution=size, seed=0, captions=CaptionSource.none, prompt="a toy, modern disney style",
        target_modules=list(TARGET_MODULES), mixed_precision=_precision(args.mixed_precision, device),
        gradient_checkpointing=True,
    )
    images = [TrainingImage(key=f"photo{i}.png", sha256="0" * 64, image=photo_image(size, size, seed=i),
                            caption=base.prompt or "") for i in range(IMAGES)]
    results: dict[str, Any] = {
        "model": str(args.model) if args.model else ("tiny SD (test configs)" if args.tiny
                                                      else "SD 1.5 architecture, random weights"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "resolution": f"{size}x{size}", "batch": args.batch, "rank": args.rank,
        "mixed_precision": base.mixed_precision, "steps_timed": args.steps, "warmup_steps": args.warmup,
    }
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        if args.model:
            model = Path(args.model)
        elif args.tiny:
            from testkit.models.sd import build_sd

            model = build_sd(Path(tmp) / "tiny-sd")
        else:
            from bench.gpu_img2img import build_sd15

            model = build_sd15(Path(tmp) / "sd15-random", device if cuda else "cpu")
        for on in checkpointing:
            hp = base.model_copy(update={"gradient_checkpointing": on})
            timed = time_training(model, hp, images, models, args.warmup, Path(tmp) / f"out-{on}")
            results |= {f"checkpointing_{'on' if on else 'off'}_{k}": v for k, v in timed.items()}
    if len(checkpointing) == 2:
        results["ratio_time_on_over_off"] = (results["checkpointing_on_s_per_1000_steps"]
                                             / results["checkpointing_off_s_per_1000_steps"])
        if cuda:
            results["ratio_memory_on_over_off"] = (results["checkpointing_on_peak_gpu_memory_gib"]
                                                   / results["checkpointing_off_peak_gpu_memory_gib"])
    results |= {"peak_rss_gib": peak_rss_bytes() / GIB, **machine()}
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

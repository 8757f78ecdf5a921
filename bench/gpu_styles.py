"""The shipped styles' cost on the SD 1.5 architecture, timed in one run: ``modern-disney`` against
``modern-disney-fast`` (its LCM-LoRA, one round of 4 steps at guidance 1) and ``modern-disney``
with a canny ControlNet (``control:``), on the same input, weights and dtype.

Each style is ``config.yaml``'s own (rounds, steps, scheduler, variants, guidance), with the model
replaced by ``--model`` (a diffusers SD 1.x folder; the GPU suite passes the random-weight SD 1.5
it built) and run through the production engines (``processor.cli.compose.build_registry``). The
LCM-LoRA and the ControlNet are built here with random weights, on the device, and saved as
safetensors (speed does not depend on weight values; nothing is downloaded):

- LCM-LoRA: a peft LoRA of rank 64 on the UNet modules ``latent-consistency/lcm-lora-sdv1-5``
  adapts (attention, transformer projections, feed-forward, ResNet convolutions, time embedding),
  loaded unfused as the worker loads it, so its per-step overhead is in the figure.
- ControlNet: ``ControlNetModel.from_unet`` of the model's UNet (the layout of
  ``lllyasviel/sd-controlnet-canny``).

Printed per style: images/s, seconds per input, UNet evaluations (samples through the UNet) per
input, peak GPU memory; and the fast and canny styles' ratios against ``modern-disney``.

    python -m bench.gpu_styles --model DIR --dtype float16      # a CUDA machine
    python -m bench.gpu_styles --tiny --device cpu --images 1   # anywhere (tiny models, 64 px)
    python -m bench.gpu_styles --tiny --device cpu --images 1 --warmups 0   # the CPU smoke test
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine, report

ROOT = Path(__file__).resolve().parents[1]
REFERENCE, FAST, CANNY = "modern-disney", "modern-disney-fast", "modern-disney-canny"
#: Figure prefixes of the three styles.
SLUGS = {REFERENCE: "modern_disney", FAST: "fast", CANNY: "canny"}
#: The canny ControlNet as config.yaml's commented example sets it.
CANNY_CONTROL = {"type": "canny", "scale": 1.0, "guidance_end": 0.8, "low": 100, "high": 200}
#: Rank and target modules of latent-consistency/lcm-lora-sdv1-5 (its adapter config).
LCM_RANK = 64
LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
#: Inputs timed per style, after one untimed warm-up input.
DEFAULT_IMAGES = 2
#: Pixels: SD 1.5's native size; the tiny models' native size.
FULL_SIZE, TINY_SIZE = 512, 64


@dataclass(frozen=True)
class StyleTiming:
    """One style's figures in this run."""

    style: str
    images_per_s: float
    s_per_input: float
    unet_evaluations_per_input: float
    variants: int
    gpu_peak_allocated_gib: float | None


def build_lcm_lora(path: Path, unet_folder: Path, device: str, dtype: Any) -> Path:
    """A random-weight LoRA with the LCM-LoRA's rank and targets for the UNet in ``unet_folder``,
    saved as ``pytorch_lora_weights.safetensors`` in ``path`` with peft's key names (diffusers'
    older ``lora.down``/``lora.up`` names, once converted, load into the convolutions but drop the
    attention layers when convolutions are targeted too: ``lora_modules`` checks this)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True, torch_dtype=dtype).to(device)
    # A tiny UNet has no up/down-samplers of the full model's names on every block: target what exists.
    names = {name for name, _ in unet.named_modules()}
    targets = [t for t in LCM_TARGETS if any(n == t or n.endswith("." + t) for n in names)]
    unet.add_adapter(LoraConfig(r=LCM_RANK, lora_alpha=LCM_RANK, target_modules=targets))
    layers = get_peft_model_state_dict(unet)
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path


def build_canny_controlnet(path: Path, unet_folder: Path, device: str, dtype: Any) -> Path:
    """``ControlNetModel.from_unet`` of the UNet in ``unet_folder`` (random conditioning layers)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True, torch_dtype=dtype).to(device)
    net = ControlNetModel.from_unet(unet)
    net.to(dtype).save_pretrained(path, safe_serialization=True)
    return path


def bench_styles(config: dict[str, Any], model: Path, lora: Path, controlnet: Path, size: int) -> dict[str, Any]:
    """config.yaml's modern-disney and modern-disney-fast, and modern-disney with a canny
    ControlNet, on ``model`` at ``size`` px."""
    shipped = config.get("styles", {})
    missing = [name for name in (REFERENCE, FAST) if name not in shipped]
    if missing:
        raise SystemExit(f"--config has no style {', '.join(missing)}: this benchmark times config.yaml's "
                         f"{REFERENCE} against {FAST}")
    styles: dict[str, Any] = {}
    for name in (REFERENCE, FAST):
        style = copy.deepcopy(shipped[name])
        style.update(model=str(model), size=size)
        style.pop("revision", None)
        style.pop("control", None)
        if style.get("lcm"):
            style["lcm"] = {**style["lcm"], "lora": str(lora)}
            style["lcm"].pop("weight_name", None)
        styles[name] = style
    styles[CANNY] = copy.deepcopy(styles[REFERENCE]) | {"control": [CANNY_CONTROL | {"model": str(controlnet)}]}
    if not styles[FAST].get("lcm"):
        raise SystemExit(f"config's {FAST} has no lcm: section; this benchmark times the LCM-LoRA style")
    return styles


def lora_modules(unet: Any, adapter: str) -> int:
    """Modules of ``unet`` that carry ``adapter`` (a LoRA's A matrix each)."""
    return sum(1 for name, _ in unet.named_modules() if name.endswith(f"lora_A.{adapter}"))


def saved_lora_modules(path: Path) -> int:
    """Modules a saved LoRA adapts (one A matrix each)."""
    from safetensors import safe_open

    with safe_open(str(path / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        return sum(1 for key in fh.keys() if "lora_A" in key or "lora.down" in key)


def time_style(engine: Any, image: Any, images: int, device: str, warmups: int = 1) -> StyleTiming:
    import torch

    from bench.gpu_img2img import UNetCounter, timed

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    counter = UNetCounter(engine.pipe.unet)
    try:
        seconds, made = timed(lambda: engine(image), images, device, counter, warmups=warmups)
    finally:
        counter.remove()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return StyleTiming(engine.style_name, made / seconds, seconds / images, counter.samples / images,
                       made // images, peak)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_styles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a local diffusers SD 1.x folder (default: build the SD 1.5 architecture with random "
                        "weights, or the tiny test model with --tiny; the GPU suite passes the one it built)")
    parser.add_argument("--tiny", action="store_true", help="tiny test models at 64 px (the CPU rehearsal)")
    parser.add_argument("--config", default=str(ROOT / "config.yaml"), help="where the styles come from")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"inputs timed per style after one warm-up input (default {DEFAULT_IMAGES})")
    parser.add_argument("--warmups", type=int, default=1,
                        help="untimed inputs per style before the timed ones (default 1: a GPU's first call "
                        "pays for kernel selection and allocation; 0 for a CPU smoke run, whose figures are not kept)")
    parser.add_argument("--size", type=int, default=None, help=f"input side in pixels (default {FULL_SIZE}; "
                        f"--tiny {TINY_SIZE})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="models.dtype (default float16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    import yaml

    from processor.cli.compose import build_registry
    from processor.config import ModelSettings, Settings
    from processor.models.loader import ModelLoader
    from testkit.images import photo_image

    args = build_parser().parse_args(argv)
    if args.images < 1 or args.warmups < 0:
        raise SystemExit("--images must be >= 1 and --warmups >= 0")
    device = ModelLoader(ModelSettings(device=args.device)).device()
    dtype = getattr(torch, args.dtype) if device.startswith("cuda") else torch.float32
    size = args.size or (TINY_SIZE if args.tiny else FULL_SIZE)
    image = photo_image(size, size)
    config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    described = args.model or ("tiny SD (test configs)" if args.tiny else "SD 1.5 architecture, random weights")
    results: dict[str, Any] = {"model": described, "size": f"{size}x{size}",
                               "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                               "dtype": args.dtype, "images_timed": args.images, "warmups": args.warmups}
    with tempfile.TemporaryDirectory(prefix="bench-styles-") as tmp:
        started = time.perf_counter()
        if args.model:
            model = Path(args.model)
        elif args.tiny:
            from testkit.models.sd import build_sd

            model = build_sd(Path(tmp) / "tiny-sd")
        else:
            from bench.gpu_img2img import build_sd15

            model = build_sd15(Path(tmp) / "sd15-random", device)
        lora = build_lcm_lora(Path(tmp) / "lcm-lora", model / "unet", device, dtype)
        controlnet = build_canny_controlnet(Path(tmp) / "controlnet-canny", model / "unet", device, dtype)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        results["build_s"] = time.perf_counter() - started
        styles = bench_styles(config, model, lora, controlnet, size)
        settings = Settings.model_validate({"run": {"styles": list(styles)}, "styles": styles,
                                            "models": {"device": args.device, "dtype": args.dtype}})
        registry = build_registry(settings)
        started = time.perf_counter()
        registry.setup(list(styles))
        results["setup_s"] = time.perf_counter() - started
        fast = registry.engine(FAST)
        loaded, saved = lora_modules(fast.pipe.unet, fast.loras.lcm_name), saved_lora_modules(lora)
        results["fast_lcm_lora_modules"] = loaded
        if loaded != saved:  # a LoRA on fewer layers than the real one would time too fast
            raise SystemExit(f"the LCM-LoRA adapts {saved} modules in its file but {loaded} after loading")
        timings = {name: time_style(registry.engine(name), image, args.images, device, args.warmups)
                   for name in styles}
    for name, t in timings.items():
        slug = SLUGS[name]
        results |= {f"{slug}_images_per_s": t.images_per_s, f"{slug}_s_per_input": t.s_per_input,
                    f"{slug}_unet_evaluations_per_input": t.unet_evaluations_per_input,
                    f"{slug}_variants": t.variants}
        if t.gpu_peak_allocated_gib is not None:
            results[f"{slug}_gpu_peak_allocated_gib"] = t.gpu_peak_allocated_gib
    ref = timings[REFERENCE]
    for name in (FAST, CANNY):
        slug = SLUGS[name]
        results[f"ratio_{slug}_over_modern_disney_images_per_s"] = timings[name].images_per_s / ref.images_per_s
        results[f"ratio_modern_disney_over_{slug}_unet_evaluations"] = (
            ref.unet_evaluations_per_input / timings[name].unet_evaluations_per_input)
    results |= machine()
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

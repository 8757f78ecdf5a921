"""What every diffusion engine and the background stage share around a pipeline call: working
sizes, seeds and their CPU generators, the style's scheduler, tensor conversion and batching that
halves on CUDA out-of-memory. Importing this module imports neither torch nor diffusers; the
functions that need them import them when called.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from processor.errors import StageFailed
from processor.models.families import Family

if TYPE_CHECKING:
    import torch

log = logging.getLogger("processor.diffusion")

#: Added to a variant's seed per round (variants are at most 16, so rounds never share a seed).
ROUND_SEED_STRIDE = 1_000_003
#: Pixels: every working side of a UNet model is a multiple of this (the SD VAE downsampling factor).
SIZE_MULTIPLE = 8


def run_in_batches(
    count: int,
    call: Callable[[int, int], torch.Tensor],
    limit: int,
    *,
    style_name: str,
    stage: str,
    too_small: str,
) -> tuple[torch.Tensor, int, int]:
    """``call(start, stop)`` over [0, count) in chunks of at most ``limit``, each moved to the CPU.
    On CUDA out-of-memory the chunk is halved and retried; at one item it fails the input with
    ``too_small`` (what to change). Returns (the concatenated outputs, the limit now, halvings)."""
    import torch

    outputs: list[torch.Tensor] = []
    halvings = 0
    start = 0
    while start < count:
        stop = min(count, start + limit)
        try:
            outputs.append(call(start, stop).cpu())
            start = stop
        except torch.cuda.OutOfMemoryError as exc:
            if limit <= 1:
                raise StageFailed(f"style {style_name!r}: {too_small}") from exc
            limit = max(1, min(limit, count) // 2)
            halvings += 1
            log.warning("cuda_oom", extra={"style": style_name, "stage": stage, "batch": limit})
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return torch.cat(outputs), limit, halvings


def _scheduler_classes() -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "dpmpp-2m-karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "euler-a": ("EulerAncestralDiscreteScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {}),
        "ddim": ("DDIMScheduler", {}),
        "unipc": ("UniPCMultistepScheduler", {}),
        "pndm": ("PNDMScheduler", {}),
        # Latent consistency: for LCM-distilled UNets (an LCM-LoRA, ``styles.<name>.lcm``), 2-8 steps.
        "lcm": ("LCMScheduler", {}),
    }


#: Style ``scheduler`` names and the diffusers scheduler (and options) each stands for.
SCHEDULERS = _scheduler_classes()


def make_scheduler(name: str, config: Any, timestep_spacing: str | None = None) -> Any:
    """The style's scheduler ``name`` built from the model's scheduler ``config`` (with the
    family's ``timestep_spacing`` when it has one: the turbo models' trailing timesteps)."""
    import diffusers

    cls_name, options = SCHEDULERS[name]
    if timestep_spacing is not None:
        config = {**config, "timestep_spacing": timestep_spacing}
    return getattr(diffusers, cls_name).from_config(config, **options)


def native_size(pipe: Any, family: Family | None = None) -> int:
    """Pixels: the long side the model was trained at. Read from the loaded model (UNet or SD 3
    transformer sample size x VAE factor) for a UNet model or a family that says so; else the
    family table's."""
    if family is not None and not family.native_from_config:
        return family.native_size
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    sample = denoiser.config.sample_size
    if isinstance(sample, (list, tuple)):
        sample = max(sample)
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8))


def working_size(width: int, height: int, long_side: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(w, h) with the aspect ratio of ``width`` x ``height``, long side ``long_side``, multiples
    of ``multiple`` (default 8, the VAE factor)."""
    scale = long_side / max(width, height)

    def snap(side: float) -> int:
        return max(multiple, round(side / multiple) * multiple)

    return snap(width * scale), snap(height * scale)


def round_seed(variant_seed: int, round_index: int) -> int:
    return variant_seed + round_index * ROUND_SEED_STRIDE


def generators(seeds: Sequence[int]) -> list[Any]:
    """One CPU generator per seed: the noise does not depend on the device or the batch split."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """RGB images from a (N, 3, H, W) batch in [0, 1]."""
    import torch

    array = (batch.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in array]

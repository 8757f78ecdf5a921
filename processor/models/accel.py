"""GPU-path switches (``models.performance``) applied to a loaded diffusers pipeline, and their record.

Each switch has a default that is right without measuring on the machine at hand:

- ``attention: sdpa``: PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels
  on CUDA) set explicitly on the UNet and VAE (``AttnProcessor2_0``), so the manifest can say which
  ran; ``eager`` is diffusers' plain matmul-softmax processor (for comparisons and old GPUs).
- ``channels_last``: NHWC memory format for the UNet's convolutions; default on CUDA only (tensor
  cores want NHWC; on the CPU it helps little and costs conversions).
- ``compile_unet``: ``torch.compile`` of the UNet, off by default: the first call per input shape
  compiles for tens of seconds (the worker warms up at start and records how long), and each new
  aspect ratio compiles again. Turn it on for long runs of same-sized inputs after measuring with
  ``python -m bench.gpu_img2img --compile``.
- ``vae_slicing``: decode a batch of variants one image at a time (lower peak memory, about the
  same speed); default on. A VAE that does not slice or tile (SVD's temporal decoder, whose
  ``decode_chunk_size`` bounds its memory instead) records the switch off, with a note.
- ``vae_tiling``: decode in overlapping tiles so large images fit in memory; ``auto`` turns it on
  per call when the working long side exceeds ``VAE_TILING_AUTO_FACTOR`` x the model's native size
  (tiles change pixels slightly, so it stays off at normal sizes).

- ``offload``: for GPUs smaller than the model (FLUX.1 and SD 3.5 at full size):
  ``model`` is diffusers' ``enable_model_cpu_offload`` (one module on the GPU at a time),
  ``sequential`` its ``enable_sequential_cpu_offload`` (layer by layer: least memory, slowest).
  The weights then stay in host memory and the pipeline is never moved whole to the GPU. On the
  CPU there is nothing to offload: the record says ``none`` with a note.

dtype (float16 / bfloat16 / float32) is ``models.dtype``, applied when the weights load.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("processor.accel")

#: ``vae_tiling: auto`` tiles when the working long side is more than this times the native size.
VAE_TILING_AUTO_FACTOR = 2


def resolve(performance: Any, device: str) -> dict[str, Any]:
    """The switches that will be active on ``device`` (``auto``/None values decided)."""
    on_cuda = device.startswith("cuda")
    channels_last = performance.channels_last if performance.channels_last is not None else on_cuda
    return {
        "attention": performance.attention,
        "channels_last": bool(channels_last),
        "compile_unet": performance.compile_unet,
        "compile_mode": performance.compile_mode if performance.compile_unet else None,
        "vae_slicing": performance.vae_slicing,
        "vae_tiling": performance.vae_tiling,
        "offload": performance.offload if on_cuda else "none",
    } | ({"offload_note": f"offload {performance.offload} is a no-op on {device}"}
         if performance.offload != "none" and not on_cuda else {})


def apply(pipe: Any, performance: Any, device: str) -> dict[str, Any]:
    """Apply the switches to ``pipe``'s modules in place (they are shared with every pipeline
    derived by ``from_pipe``); returns what is active, for logs and manifests."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    active = resolve(performance, device)
    processor_cls = AttnProcessor2_0 if active["attention"] == "sdpa" else AttnProcessor
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(processor_cls())
    unet = getattr(pipe, "unet", None)  # FLUX.1 / SD 3 have a transformer instead (no convolutions)
    if active["channels_last"] and unet is not None:
        if any(p.dim() == 5 for p in unet.parameters()):  # SVD's temporal 3D convolutions: no NHWC form
            active |= {"channels_last": False, "channels_last_note": "the UNet has 3D convolutions"}
        else:
            unet.to(memory_format=torch.channels_last)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if not hasattr(vae, "use_slicing"):  # SVD's temporal decoder: decode_chunk_size bounds it instead
            active |= {"vae_slicing": False, "vae_slicing_note": f"{type(vae).__name__} does not slice"}
        else:
            (vae.enable_slicing if active["vae_slicing"] else vae.disable_slicing)()
        if not hasattr(vae, "use_tiling"):
            active |= {"vae_tiling": "off", "vae_tiling_note": f"{type(vae).__name__} does not tile"}
        elif active["vae_tiling"] == "on":
            vae.enable_tiling()
    if active["compile_unet"] and unet is not None:
        pipe.unet = torch.compile(unet, mode=active["compile_mode"])
    if active["offload"] == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif active["offload"] == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    log.info("performance_switches", extra=active)
    return active


def set_vae_tiling(pipe: Any, active: dict[str, Any], long_side: int, native: int) -> bool:
    """Turn VAE tiling on or off for one call (the VAE is shared: set it before every call)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "use_tiling"):
        return False
    mode = active.get("vae_tiling", "off")
    tiled = mode == "on" or (mode == "auto" and long_side > VAE_TILING_AUTO_FACTOR * native)
    (vae.enable_tiling if tiled else vae.disable_tiling)()
    return tiled


def warm_up(call: Any, active: dict[str, Any], what: str) -> float | None:
    """Run ``call()`` once when the UNet is compiled, so compilation happens at start, not on the
    first input; returns (and logs) the seconds it took, or None when nothing was compiled."""
    if not active.get("compile_unet"):
        return None
    started = time.perf_counter()
    call()
    seconds = round(time.perf_counter() - started, 3)
    log.info("compile_warmup", extra={"what": what, "seconds": seconds})
    return seconds

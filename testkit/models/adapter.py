"""Tiny random-weight T2I-Adapters, built offline and saved with ``save_pretrained`` (config.json
with ``_class_name: T2IAdapter`` and safetensors), as TencentARC's hub folders are laid out.

An adapter's features are added to the UNet's down blocks, so its shapes must line up with them.
The published SD 1.x adapters (``full_adapter``) fit SD 1.5's UNet, whose first block has
cross-attention (the feature is added before that block downsamples): ``build_sd_for_adapter``
makes a tiny SD of that layout. ``full_adapter_xl`` fits SDXL's layout, which the tiny SDXL of
``testkit.models.sd`` already has (a plain first block, the feature added after it downsamples).
"""

from __future__ import annotations

from pathlib import Path

#: The tiny UNets' block widths (``testkit.models.sd._unet``): one adapter feature per block.
TINY_CHANNELS = [32, 64]


def build_sd_for_adapter(path: Path) -> Path:
    """A tiny SD 1.x pipeline with SD 1.5's block order (cross-attention first, a plain last block)."""
    from testkit.models.sd import build_sd

    return build_sd(path, unet_options={"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                                        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")})


def build_t2i_adapter(path: Path, *, xl: bool = False, seed: int = 5, in_channels: int = 3) -> Path:
    """A tiny ``T2IAdapter`` for ``build_sd_for_adapter``'s UNet (``full_adapter``, 8x unshuffle)
    or, with ``xl``, for the tiny SDXL's (``full_adapter_xl``, 16x unshuffle). ``in_channels`` 1
    is a grayscale-map adapter, as TencentARC's canny and sketch ones are."""
    import torch
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    adapter = T2IAdapter(in_channels=in_channels, channels=TINY_CHANNELS, num_res_blocks=1,
                         downscale_factor=16 if xl else 8, adapter_type="full_adapter_xl" if xl else "full_adapter")
    adapter.save_pretrained(path, safe_serialization=True)
    return path

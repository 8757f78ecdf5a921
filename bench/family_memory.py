"""Weight memory of each model family, counted: every component is built on PyTorch's ``meta``
device (shapes, no storage, no download) from the architecture fields of the published
``config.json`` files, and its parameters are counted.

    python -m bench.family_memory [--bytes-per-param 2]

Printed per family: parameters per component, the total, and its size at ``--bytes-per-param``
(2: float16 / bfloat16, what a GPU worker loads). The total is what ``offload: none`` keeps on the
GPU; ``offload: model`` keeps the largest component at a time (printed too); ``sequential``
about one layer. Activations, the CUDA context and the allocator's slack come on top: measure
those on the GPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# Architecture fields of the published configs (hub ids in FAMILIES). Only shape-bearing fields.
CLIP_L: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              vocab_size=49408, max_position_embeddings=77, projection_dim=768)
CLIP_BIG_G: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                  num_attention_heads=20,
                  vocab_size=49408, max_position_embeddings=77, projection_dim=1280)
T5_XXL: dict[str, Any] = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu")
VAE_SD: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_16: dict[str, Any] = VAE_SD | dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
UNET_SD15: dict[str, Any] = dict(cross_attention_dim=768, attention_head_dim=8)
UNET_SDXL: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
FLUX: dict[str, Any] = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
SD3_MEDIUM: dict[str, Any] = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                  attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, pos_embed_max_size=192)
SD35_LARGE: dict[str, Any] = SD3_MEDIUM | dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432)
SD35_MEDIUM: dict[str, Any] = SD3_MEDIUM | dict(pos_embed_max_size=384, qk_norm="rms_norm",
                                                dual_attention_layers=tuple(range(13)))


def _clip(fields: dict[str, Any], projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**fields))


def _t5() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL))


def _diffusers(cls_name: str, fields: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        import diffusers

        return getattr(diffusers, cls_name)(**fields)

    return build


@dataclass(frozen=True)
class Family:
    name: str
    models: str
    components: dict[str, Callable[[], Any]]


FAMILIES = [
    Family("SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5 (mo-di-diffusion)", {
        "unet": _diffusers("UNet2DConditionModel", UNET_SD15), "vae": _diffusers("AutoencoderKL", VAE_SD),
        "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, False)}),
    Family("SDXL", "stabilityai/stable-diffusion-xl-base-1.0", {
        "unet": _diffusers("UNet2DConditionModel", UNET_SDXL), "vae": _diffusers("AutoencoderKL", VAE_SD),
        "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, False),
        "text_encoder_2 (bigG)": lambda: _clip(CLIP_BIG_G, True)}),
    Family("SD 3 medium", "stabilityai/stable-diffusion-3-medium-diffusers", {
        "transformer": _diffusers("SD3Transformer2DModel", SD3_MEDIUM), "vae": _diffusers("AutoencoderKL", VAE_16),
        "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, True), "text_encoder_2 (bigG)": lambda: _clip(CLIP_BIG_G, True),
        "text_encoder_3 (T5-XXL)": _t5}),
    Family("SD 3.5 medium", "stabilityai/stable-diffusion-3.5-medium", {
        "transformer": _diffusers("SD3Transformer2DModel", SD35_MEDIUM), "vae": _diffusers("AutoencoderKL", VAE_16),
        "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, True), "text_encoder_2 (bigG)": lambda: _clip(CLIP_BIG_G, True),
        "text_encoder_3 (T5-XXL)": _t5}),
    Family("SD 3.5 large", "stabilityai/stable-diffusion-3.5-large", {
        "transformer": _diffusers("SD3Transformer2DModel", SD35_LARGE), "vae": _diffusers("AutoencoderKL", VAE_16),
        "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, True), "text_encoder_2 (bigG)": lambda: _clip(CLIP_BIG_G, True),
        "text_encoder_3 (T5-XXL)": _t5}),
    Family("FLUX.1 dev / Kontext dev", "black-forest-labs/FLUX.1-dev, FLUX.1-Kontext-dev", {
        "transformer": _diffusers("FluxTransformer2DModel", FLUX | {"guidance_embeds": True}),
        "vae": _diffusers("AutoencoderKL", VAE_16), "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, False),
        "text_encoder_2 (T5-XXL)": _t5}),
    Family("FLUX.1 schnell", "black-forest-labs/FLUX.1-schnell", {
        "transformer": _diffusers("FluxTransformer2DModel", FLUX | {"guidance_embeds": False}),
        "vae": _diffusers("AutoencoderKL", VAE_16), "text_encoder (CLIP-L)": lambda: _clip(CLIP_L, False),
        "text_encoder_2 (T5-XXL)": _t5}),
]


def count(build: Callable[[], Any]) -> int:
    """Parameters of the module ``build`` makes, on the meta device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes-per-param", type=float, default=2.0, help="2: float16/bfloat16; 4: float32")
    parser.add_argument("--family", action="append", help="only these families (by name), e.g. 'FLUX.1 schnell'")
    args = parser.parse_args(argv)
    bpp = args.bytes_per_param
    print(f"| family | components (parameters) | total | weights at {bpp:g} B/param | largest component |")
    print("|---|---|---|---|---|")
    for family in FAMILIES:
        if args.family and family.name not in args.family:
            continue
        counts = {name: count(build) for name, build in family.components.items()}
        total = sum(counts.values())
        parts = ", ".join(f"{name} {n / 1e9:.2f}B" for name, n in counts.items())
        largest = max(counts.values())
        print(f"| {family.name} | {parts} | {total / 1e9:.2f}B | {total * bpp / GIB:.1f} GiB "
              f"| {largest * bpp / GIB:.1f} GiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parameter counts and float16 weight sizes of the model families styles can run, counted.

Every component (UNet or transformer, VAE, text encoders, ControlNet) is instantiated from the
published architecture's configuration on the meta device: nothing is allocated, nothing is
downloaded, the parameters are counted. The configurations are written out below from the
published ``config.json`` files (the values that decide the shapes); where diffusers' own
constructor defaults are the published model (``FluxTransformer2DModel``, ``SD3Transformer2DModel``'s
layer layout) they are used as is. Float16 bytes are 2 per parameter: the weights a GPU must hold
(activations, which grow with the image size and batch, come on top).

    python -m bench.model_sizes           # a Markdown table (README's "Model families")
    python -m bench.model_sizes --json    # the same figures as JSON

Licences are the model cards' ids as declared in config (``license:``), not read from anywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
#: Bytes per parameter in float16 / bfloat16.
FP16_BYTES = 2


@dataclass(frozen=True)
class Family:
    """One model family: its components' parameter counts and what a style names to run it."""

    name: str
    #: The style engine(s) and keys that run it here ("not yet" for a family no engine runs).
    runs_as: str
    #: The licence id of the family's reference checkpoint's card.
    license: str
    #: Component name -> parameters.
    components: dict[str, int]

    @property
    def params(self) -> int:
        return sum(self.components.values())

    @property
    def fp16_gib(self) -> float:
        return self.params * FP16_BYTES / GIB


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta(build: Callable[[], Any]) -> int:
    import torch

    with torch.device("meta"):
        return _count(build())


# --------------------------------------------------------------------------- components


def clip_text(hidden: int, intermediate: int, layers: int, heads: int, *, act: str = "quick_gelu",
              projection: int | None = None) -> int:
    """A CLIP text tower (49,408 tokens, 77 positions); ``projection``: with its text projection
    (CLIPTextModelWithProjection, SDXL's and SD 3's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=projection or hidden)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _meta(lambda: cls(config))


def clip_l() -> int:
    """OpenAI CLIP ViT-L/14's text tower: SD 1.x's encoder and the first of SDXL, SD 3 and FLUX."""
    return clip_text(768, 3072, 12, 12)


def clip_l_projected() -> int:
    return clip_text(768, 3072, 12, 12, projection=768)


def openclip_h() -> int:
    """OpenCLIP ViT-H/14's text tower as SD 2.x ships it (23 of its 24 layers)."""
    return clip_text(1024, 4096, 23, 16, act="gelu")


def openclip_bigg() -> int:
    """OpenCLIP ViT-bigG/14's text tower with projection: SDXL's (and SD 3's) second encoder."""
    return clip_text(1280, 5120, 32, 20, act="gelu", projection=1280)


def t5_xxl() -> int:
    """T5 v1.1 XXL's encoder (google/t5-v1_1-xxl): SD 3's third and FLUX's second text encoder."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      feed_forward_proj="gated-gelu", is_gated_act=True)
    return _meta(lambda: T5EncoderModel(config))


def vae(latent_channels: int = 4) -> int:
    """The Stable Diffusion VAE (4 latent channels; 16 for SD 3 and FLUX)."""
    from diffusers import AutoencoderKL

    return _meta(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32))


SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD21_UNET = SD15_UNET | dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                             use_linear_projection=True)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24), cross_attention_dim=1280,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
)


def unet(**config: Any) -> int:
    from diffusers import UNet2DConditionModel

    return _meta(lambda: UNet2DConditionModel(**config))


def controlnet(**config: Any) -> int:
    """A ControlNet for the UNet of ``config`` (its encoder and middle block, plus the condition
    embedding and zero convolutions), as lllyasviel/sd-controlnet-canny for SD 1.5."""
    from diffusers import ControlNetModel

    keep = {k: v for k, v in config.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    return _meta(lambda: ControlNetModel(**keep))


def sd3_medium_transformer() -> int:
    """stabilityai/stable-diffusion-3-medium's MMDiT (24 joint blocks of width 1536)."""
    from diffusers import SD3Transformer2DModel

    return _meta(lambda: SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192))


def flux_transformer(*, guidance: bool) -> int:
    """FLUX.1's transformer (19 double and 38 single blocks, diffusers' defaults); dev embeds the
    guidance scale, schnell does not."""
    from diffusers import FluxTransformer2DModel

    return _meta(lambda: FluxTransformer2DModel(guidance_embeds=guidance))


# --------------------------------------------------------------------------- families


def families() -> list[Family]:
    """Every family, counted now (a few seconds on the CPU: meta tensors, no memory)."""
    l_text, bigg, t5 = clip_l(), openclip_bigg(), t5_xxl()
    vae4, vae16 = vae(4), vae(16)
    sd15 = {"unet": unet(**SD15_UNET), "vae": vae4, "text_encoder": l_text}
    return [
        Family("SD 1.x (SD 1.5, mo-di-diffusion, anything-v3)", "img2img (+ lcm LoRA), txt2img",
               "creativeml-openrail-m", sd15),
        Family("SD 1.x instruct-pix2pix", "instruct-pix2pix", "mit",
               sd15 | {"unet": unet(**SD15_UNET | {"in_channels": 8})}),
        Family("SD 1.x + canny ControlNet", "img2img + control", "openrail",
               sd15 | {"controlnet": controlnet(**SD15_UNET)}),
        Family("SD 2.1 (768-v)", "img2img, txt2img", "openrail++",
               {"unet": unet(**SD21_UNET), "vae": vae4, "text_encoder": openclip_h()}),
        Family("SDXL base 1.0", "img2img, txt2img", "openrail++",
               {"unet": unet(**SDXL_UNET), "vae": vae4, "text_encoder": l_text, "text_encoder_2": bigg}),
        Family("SDXL refiner 1.0", "not yet (a refiner round)", "openrail++",
               {"unet": unet(**SDXL_REFINER_UNET), "vae": vae4, "text_encoder_2": bigg}),
        Family("SD 3 medium", "not yet", "other",
               {"transformer": sd3_medium_transformer(), "vae": vae16, "text_encoder": clip_l_projected(),
                "text_encoder_2": bigg, "text_encoder_3": t5}),
        Family("FLUX.1-schnell", "not yet", "apache-2.0",
               {"transformer": flux_transformer(guidance=False), "vae": vae16, "text_encoder": l_text,
                "text_encoder_2": t5}),
        Family("FLUX.1-dev", "not yet", "non-commercial",
               {"transformer": flux_transformer(guidance=True), "vae": vae16, "text_encoder": l_text,
                "text_encoder_2": t5}),
    ]


def table(rows: Sequence[Family]) -> str:
    lines = ["| family | style engine | parameters | float16 weights | largest component | licence |",
             "|---|---|---:|---:|---|---|"]
    for f in rows:
        big, n = max(f.components.items(), key=lambda kv: kv[1])
        lines.append(f"| {f.name} | {f.runs_as} | {f.params / 1e9:.2f} B | {f.fp16_gib:.1f} GiB | "
                     f"{big} {n / 1e9:.2f} B | {f.license} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Family]:
    parser = argparse.ArgumentParser(prog="python -m bench.model_sizes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    rows = families()
    if args.json:
        print(json.dumps([asdict(f) | {"params": f.params, "fp16_gib": round(f.fp16_gib, 3)} for f in rows], indent=2))
    else:
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()

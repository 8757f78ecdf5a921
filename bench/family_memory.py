"""Parameters and weight memory of every model family a style can run, counted.

Every component (UNet or transformer, VAE, text encoders, ControlNet) is built on PyTorch's
``meta`` device (shapes, no storage, nothing downloaded) from the architecture fields of the
published ``config.json`` files, written out below beside the hub ids (only the fields that decide
the shapes; where diffusers' or transformers' constructor defaults are the published model, as
``FluxTransformer2DModel`` and ``QwenImageTransformer2DModel``, they are used as is), and its
parameters are counted.

    python -m bench.family_memory                     # the families table (float16 weights), still and video
    python -m bench.family_memory --video             # the image-to-video families (engine: animate) only
    python -m bench.family_memory --components        # parameters per component
    python -m bench.family_memory --json              # the same figures as JSON
    python -m bench.family_memory --family "SD 3.5 large" --bytes-per-param 4
    python -m bench.family_memory --addons            # README's add-ons table and shipped styles' totals

``--addons`` counts what a style loads beside its family, the same way. From published config
files (fields written out below): the IP-Adapter image encoders (ViT-H/14, ViT-bigG/14), the
ControlNets (SD 1.5, SDXL), Depth Anything V2 Small, the CLIP scorer and the captioner's CLIP and
BLIP. From diffusers' own classes on the base UNet's published config: the IP-Adapters
(``ImageProjection`` + one ``IPAdapterAttnProcessor2_0`` per cross-attention). From our own
architecture code (``processor/pipeline/control_preprocess.py``): the lineart generator and HED.

Weights are parameters x ``--bytes-per-param`` (2: float16 / bfloat16, what a GPU worker loads).
The total is what ``offload: none`` keeps on the GPU (``--json`` also gives each family's dtype
under ``models.dtype: auto`` on a GPU, from ``processor.models.families``); ``offload: model``
the largest component at a time (printed too); ``sequential`` about one layer. Activations, the CUDA context and the
allocator's slack come on top: measure those on the GPU. Licences are the reference checkpoints'
model-card ids (as declared in config with ``license:``), not read from anywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from processor.models.families import FamilyId, choose_dtype
from processor.models.families import family as table_row

GIB = 1024**3
#: Bytes per parameter in float16 / bfloat16.
FP16_BYTES = 2

# Architecture fields of the published configs (hub ids in FAMILIES). Only shape-bearing fields.
CLIP_L: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              vocab_size=49408, max_position_embeddings=77, projection_dim=768,
                              hidden_act="quick_gelu")
#: OpenCLIP ViT-H/14's text tower as SD 2.x ships it (23 of its 24 layers).
OPENCLIP_H: dict[str, Any] = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                  num_attention_heads=16, vocab_size=49408, max_position_embeddings=77,
                                  projection_dim=1024, hidden_act="gelu")
CLIP_BIG_G: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                  num_attention_heads=20, vocab_size=49408, max_position_embeddings=77,
                                  projection_dim=1280, hidden_act="gelu")
T5_XXL: dict[str, Any] = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                              feed_forward_proj="gated-gelu")
VAE_SD: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_16: dict[str, Any] = VAE_SD | dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
UNET_SD15: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8)
UNET_SD21: dict[str, Any] = UNET_SD15 | dict(sample_size=96, cross_attention_dim=1024,
                                             attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
UNET_SDXL: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
UNET_SDXL_REFINER: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24), cross_attention_dim=1280,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560)
#: lllyasviel/sd-controlnet-canny: the SD 1.5 UNet's encoder and middle block, plus the condition
#: embedding and zero convolutions.
CONTROLNET_SD15: dict[str, Any] = {k: v for k, v in UNET_SD15.items()
                                   if k not in ("sample_size", "out_channels", "up_block_types")}
FLUX: dict[str, Any] = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            axes_dims_rope=(16, 56, 56))
SD3_MEDIUM: dict[str, Any] = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
SD35_LARGE: dict[str, Any] = SD3_MEDIUM | dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432)
SD35_MEDIUM: dict[str, Any] = SD3_MEDIUM | dict(pos_embed_max_size=384, qk_norm="rms_norm",
                                                dual_attention_layers=tuple(range(13)))
#: Qwen-Image's MMDiT (60 blocks of width 3072): ``QwenImageTransformer2DModel``'s defaults.
QWEN_IMAGE: dict[str, Any] = {}
#: Qwen-Image's VAE (a Wan-style causal 3D VAE, 16 latent channels): ``AutoencoderKLQwenImage``'s defaults.
QWEN_VAE: dict[str, Any] = {}
#: Qwen2.5-VL-7B-Instruct, Qwen-Image's text encoder (its language model with lm_head, and the vision tower).
QWEN25_VL_7B: dict[str, Any] = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    vocab_size=152064, hidden_size=3584, tie_word_embeddings=False)


def _clip(fields: dict[str, Any], projection: bool) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**fields))

    return build


def _t5() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL))


def _qwen_vl() -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))


def _diffusers(cls_name: str, fields: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        import diffusers

        return getattr(diffusers, cls_name)(**fields)

    return build


@dataclass(frozen=True)
class Family:
    """One model family: what a style names to run it, its reference checkpoints, its components."""

    name: str
    #: The style engine(s) and keys that run it here.
    runs_as: str
    #: The licence id of the family's reference checkpoint's card.
    license: str
    #: Hub ids of the reference checkpoints the configs come from.
    models: str
    components: dict[str, Callable[[], Any]]
    #: Its row in the model family table (``processor.models.families``): the dtype it loads in.
    table: FamilyId | None = None


@dataclass(frozen=True)
class Counted:
    """A family with its components' parameters counted."""

    name: str
    runs_as: str
    license: str
    models: str
    #: Component name -> parameters.
    components: dict[str, int]
    #: The dtype the family table gives it on a GPU under ``models.dtype: auto`` (None: not a family).
    dtype: str | None = None

    @property
    def params(self) -> int:
        return sum(self.components.values())

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.components.items(), key=lambda kv: kv[1])

    def gib(self, bytes_per_param: float = FP16_BYTES) -> float:
        return self.params * bytes_per_param / GIB

    @property
    def fp16_gib(self) -> float:
        return self.gib(FP16_BYTES)


_SD15 = {"unet": _diffusers("UNet2DConditionModel", UNET_SD15), "vae": _diffusers("AutoencoderKL", VAE_SD),
         "text_encoder": _clip(CLIP_L, False)}
_SDXL_TEXT = {"text_encoder": _clip(CLIP_L, False), "text_encoder_2": _clip(CLIP_BIG_G, True)}
_SD3_TEXT = {"text_encoder": _clip(CLIP_L, True), "text_encoder_2": _clip(CLIP_BIG_G, True), "text_encoder_3": _t5}
_FLUX_TEXT = {"text_encoder": _clip(CLIP_L, False), "text_encoder_2": _t5}

FAMILIES = [
    Family("SD 1.5 (mo-di-diffusion, anything-v3)", "img2img (+ lcm LoRA), txt2img", "creativeml-openrail-m",
           "stable-diffusion-v1-5/stable-diffusion-v1-5 (mo-di-diffusion, anything-v3)", _SD15, table=FamilyId.SD),
    Family("SD 1.5 instruct-pix2pix", "instruct-pix2pix", "mit", "timbrooks/instruct-pix2pix",
           _SD15 | {"unet": _diffusers("UNet2DConditionModel", UNET_SD15 | {"in_channels": 8})},
           table=FamilyId.SD_PIX2PIX),
    Family("SD 1.5 + canny ControlNet", "img2img + control", "openrail", "lllyasviel/sd-controlnet-canny",
           _SD15 | {"controlnet": _diffusers("ControlNetModel", CONTROLNET_SD15)}, table=FamilyId.SD),
    Family("SD 2.1 (768-v)", "img2img, txt2img", "openrail++", "stabilityai/stable-diffusion-2-1",
           {"unet": _diffusers("UNet2DConditionModel", UNET_SD21), "vae": _diffusers("AutoencoderKL", VAE_SD),
            "text_encoder": _clip(OPENCLIP_H, False)}, table=FamilyId.SD),
    Family("SDXL base 1.0 (and SDXL-Turbo: same architecture, non-commercial licence)",
           "img2img (+ `turbo`), txt2img", "openrail++", "stabilityai/stable-diffusion-xl-base-1.0",
           {"unet": _diffusers("UNet2DConditionModel", UNET_SDXL), "vae": _diffusers("AutoencoderKL", VAE_SD)}
           | _SDXL_TEXT, table=FamilyId.SDXL),
    Family("SDXL refiner 1.0", "img2img `refiner:` (a last round; shares the base's VAE and second text encoder)",
           "openrail++", "stabilityai/stable-diffusion-xl-refiner-1.0",
           {"unet": _diffusers("UNet2DConditionModel", UNET_SDXL_REFINER), "vae": _diffusers("AutoencoderKL", VAE_SD),
            "text_encoder_2": _clip(CLIP_BIG_G, True)}, table=FamilyId.SDXL),
    Family("SD 3 medium", "img2img (flow)", "other (Stability AI Community)",
           "stabilityai/stable-diffusion-3-medium-diffusers",
           {"transformer": _diffusers("SD3Transformer2DModel", SD3_MEDIUM), "vae": _diffusers("AutoencoderKL", VAE_16)}
           | _SD3_TEXT, table=FamilyId.SD3),
    Family("SD 3.5 medium", "img2img (flow)", "other (Stability AI Community)",
           "stabilityai/stable-diffusion-3.5-medium",
           {"transformer": _diffusers("SD3Transformer2DModel", SD35_MEDIUM),
            "vae": _diffusers("AutoencoderKL", VAE_16)} | _SD3_TEXT, table=FamilyId.SD3_5),
    Family("SD 3.5 large", "img2img (flow)", "other (Stability AI Community)",
           "stabilityai/stable-diffusion-3.5-large",
           {"transformer": _diffusers("SD3Transformer2DModel", SD35_LARGE),
            "vae": _diffusers("AutoencoderKL", VAE_16)} | _SD3_TEXT, table=FamilyId.SD3_5),
    Family("FLUX.1-schnell", "img2img (flow)", "apache-2.0", "black-forest-labs/FLUX.1-schnell",
           {"transformer": _diffusers("FluxTransformer2DModel", FLUX | {"guidance_embeds": False}),
            "vae": _diffusers("AutoencoderKL", VAE_16)} | _FLUX_TEXT, table=FamilyId.FLUX_SCHNELL),
    Family("FLUX.1-dev, FLUX.1 Kontext dev", "img2img (flow); Kontext: edit", "non-commercial",
           "black-forest-labs/FLUX.1-dev, black-forest-labs/FLUX.1-Kontext-dev",
           {"transformer": _diffusers("FluxTransformer2DModel", FLUX | {"guidance_embeds": True}),
            "vae": _diffusers("AutoencoderKL", VAE_16)} | _FLUX_TEXT, table=FamilyId.FLUX_DEV),
    Family("Qwen-Image-Edit", "edit", "apache-2.0",
           "Qwen/Qwen-Image-Edit",
           {"transformer": _diffusers("QwenImageTransformer2DModel", QWEN_IMAGE),
            "vae": _diffusers("AutoencoderKLQwenImage", QWEN_VAE), "text_encoder": _qwen_vl},
           table=FamilyId.QWEN_IMAGE_EDIT),
]


# --------------------------------------------------------------------------- image-to-video families
#
# ``engine: animate``. From the published configs (fields that decide the shapes), the same way:
# SVD's spatio-temporal UNet is ``UNetSpatioTemporalConditionModel``'s defaults (they are the
# stable-video-diffusion-img2vid(-xt) config; SVD and SVD-XT differ only in ``num_frames``, which
# holds no weights), its temporal-decoder VAE and OpenCLIP ViT-H/14 image encoder are written out;
# Wan's and LTX-Video's transformers and VAEs are the fields of diffusers' conversion scripts
# (``scripts/convert_wan_to_diffusers.py``, ``scripts/convert_ltx_to_diffusers.py``); their text
# encoders are UMT5-XXL's and T5-XXL's encoders.

#: stabilityai/stable-video-diffusion-img2vid-xt ``vae/config.json``.
VAE_SVD: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                               layers_per_block=2, latent_channels=4, sample_size=768)
#: google/umt5-xxl's encoder (Wan's text encoder).
UMT5_XXL: dict[str, Any] = dict(vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                feed_forward_proj="gated-gelu")
_WAN_14B: dict[str, Any] = dict(patch_size=(1, 2, 2), attention_head_dim=128, num_attention_heads=40, num_layers=40,
                                ffn_dim=13824, freq_dim=256, text_dim=4096, in_channels=36, out_channels=16,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
#: Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (and 720P) ``transformer/config.json``: the CLIP image tokens' K/V too.
WAN21_I2V_14B: dict[str, Any] = _WAN_14B | dict(image_dim=1280, added_kv_proj_dim=5120)
#: Wan-AI/Wan2.2-I2V-A14B-Diffusers: two such experts (high noise, low noise), no image encoder.
WAN22_I2V_A14B: dict[str, Any] = _WAN_14B
#: Wan-AI/Wan2.2-TI2V-5B-Diffusers ``transformer/config.json``.
WAN22_TI2V_5B: dict[str, Any] = _WAN_14B | dict(num_attention_heads=24, num_layers=30, ffn_dim=14336, in_channels=48,
                                               out_channels=48)
#: Wan 2.1's causal 3D VAE: ``AutoencoderKLWan``'s defaults. Wan 2.2 TI2V's (16x, 48 channels):
VAE_WAN22: dict[str, Any] = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                                 out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)
#: Lightricks/LTX-Video 0.9.5 (2B): ``LTXVideoTransformer3DModel``'s defaults are its transformer; its VAE:
VAE_LTX_095: dict[str, Any] = dict(
    latent_channels=128, block_out_channels=(128, 256, 512, 1024, 2048),
    down_block_types=("LTXVideo095DownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False), downsample_type=("spatial", "temporal", "spatiotemporal",
                                                                          "spatiotemporal"),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4,
    patch_size_t=1, encoder_causal=True, decoder_causal=False, spatial_compression_ratio=32,
    temporal_compression_ratio=8)
#: Lightricks/LTX-Video 0.9.7 dev (13B) ``transformer/config.json`` (its VAE is 0.9.5's shape).
LTX_13B: dict[str, Any] = dict(num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)
#: OpenCLIP ViT-H/14's vision tower (card: 632.08M): SVD's and Wan 2.1's image encoder, and the
#: IP-Adapter SD 1.5's (h94/IP-Adapter ``models/image_encoder``).
CLIP_VISION_H: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                     num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024,
                                     hidden_act="gelu")


def _umt5() -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**UMT5_XXL))


def _vision_h() -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION_H))


_WAN_VAE = _diffusers("AutoencoderKLWan", {})
VIDEO_FAMILIES = [
    Family("Stable Video Diffusion, SVD-XT", "animate", "non-commercial",
           "stabilityai/stable-video-diffusion-img2vid, stabilityai/stable-video-diffusion-img2vid-xt",
           {"unet": _diffusers("UNetSpatioTemporalConditionModel", {}),
            "vae": _diffusers("AutoencoderKLTemporalDecoder", VAE_SVD), "image_encoder": _vision_h},
           table=FamilyId.SVD_XT),
    Family("Wan 2.1 I2V 14B (480P, 720P)", "animate", "apache-2.0",
           "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
           {"transformer": _diffusers("WanTransformer3DModel", WAN21_I2V_14B), "vae": _WAN_VAE,
            "text_encoder": _umt5, "image_encoder": _vision_h}, table=FamilyId.WAN_I2V),
    Family("Wan 2.2 I2V A14B", "animate", "apache-2.0", "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
           {"transformer": _diffusers("WanTransformer3DModel", WAN22_I2V_A14B),
            "transformer_2": _diffusers("WanTransformer3DModel", WAN22_I2V_A14B), "vae": _WAN_VAE,
            "text_encoder": _umt5}, table=FamilyId.WAN_I2V),
    Family("Wan 2.2 TI2V 5B", "animate", "apache-2.0", "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
           {"transformer": _diffusers("WanTransformer3DModel", WAN22_TI2V_5B),
            "vae": _diffusers("AutoencoderKLWan", VAE_WAN22), "text_encoder": _umt5}, table=FamilyId.WAN_TI2V),
    Family("LTX-Video 2B (0.9.5)", "animate", "other (LTX-Video open weights)", "Lightricks/LTX-Video",
           {"transformer": _diffusers("LTXVideoTransformer3DModel", {}),
            "vae": _diffusers("AutoencoderKLLTXVideo", VAE_LTX_095), "text_encoder": _t5}, table=FamilyId.LTX),
    Family("LTX-Video 13B (0.9.7 dev)", "animate", "other (LTX-Video open weights)", "Lightricks/LTX-Video",
           {"transformer": _diffusers("LTXVideoTransformer3DModel", LTX_13B),
            "vae": _diffusers("AutoencoderKLLTXVideo", VAE_LTX_095), "text_encoder": _t5}, table=FamilyId.LTX),
]


# --------------------------------------------------------------------------- add-on models
#
# What a style loads beside its base family (``ip_adapter``, ``control``, its preprocessors,
# ``pipeline.clip_score``, the captioner). From published config files: the two IP-Adapter image
# encoders, the ControlNets, Depth Anything V2 Small, the CLIP scorer and BLIP large (fields below).
# From diffusers' own IP-Adapter classes: the adapters (``ImageProjection`` and one
# ``IPAdapterAttnProcessor2_0`` per cross-attention of the base UNet built from its published
# config, 4 image tokens, as ``ip-adapter_sd15`` / ``ip-adapter_sdxl`` ship them). From our own
# architecture code (``processor/pipeline/control_preprocess.py``): the lineart generator and HED.

#: h94/IP-Adapter ``models/image_encoder``: OpenCLIP ViT-H/14's vision tower (CLIP_VISION_H, above).
#: h94/IP-Adapter ``sdxl_models/image_encoder``: OpenCLIP ViT-bigG/14's vision tower (card: 1844.9M).
CLIP_VISION_BIG_G: dict[str, Any] = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                                         num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1280,
                                         hidden_act="gelu")
#: openai/clip-vit-large-patch14's vision tower (its text tower is CLIP_L).
CLIP_VISION_L: dict[str, Any] = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768,
                                     hidden_act="quick_gelu")
#: diffusers/controlnet-canny-sdxl-1.0: the SDXL base UNet's encoder and middle block.
CONTROLNET_SDXL: dict[str, Any] = {k: v for k, v in UNET_SDXL.items()
                                   if k not in ("sample_size", "out_channels", "up_block_types")}
#: depth-anything/Depth-Anything-V2-Small-hf: a DINOv2-small backbone and the DPT head.
DEPTH_ANYTHING_V2_SMALL: dict[str, Any] = dict(
    backbone_config=dict(model_type="dinov2", hidden_size=384, num_attention_heads=6, image_size=518,
                         out_indices=[3, 6, 9, 12], reshape_hidden_states=False),
    reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    reassemble_factors=[4, 2, 1, 0.5], patch_size=14, depth_estimation_type="relative")
#: Salesforce/blip-image-captioning-large: ViT-L/16 at 384 px and BLIP's BERT-base text decoder.
BLIP_LARGE: dict[str, Any] = dict(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                     num_attention_heads=16, image_size=384, patch_size=16),
                                  text_config=dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12,
                                                   num_attention_heads=12, intermediate_size=3072))
#: Image tokens of ``ip-adapter_sd15`` / ``ip-adapter_sdxl`` (global embedding, 4 tokens).
IP_ADAPTER_TOKENS = 4


def _clip_vision(fields: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig(**fields))

    return build


def _clip_model() -> Any:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(text_config=CLIP_L, vision_config=CLIP_VISION_L, projection_dim=768))


def _depth_anything() -> Any:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    return DepthAnythingForDepthEstimation(DepthAnythingConfig(**DEPTH_ANYTHING_V2_SMALL))


def _blip_large() -> Any:
    from transformers import BlipConfig, BlipForConditionalGeneration

    return BlipForConditionalGeneration(BlipConfig(**BLIP_LARGE))


def _ip_adapter(unet_fields: dict[str, Any], image_embed_dim: int) -> Callable[[], Any]:
    """The adapter diffusers' ``load_ip_adapter`` adds to a UNet of ``unet_fields``: the image
    projection and, per cross-attention, ``to_k_ip`` / ``to_v_ip`` (self-attention gets none)."""

    def build() -> Any:
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
        from diffusers.models.embeddings import ImageProjection
        from torch import nn

        unet = UNet2DConditionModel(**unet_fields)
        cross = unet.config.cross_attention_dim
        processors = [IPAdapterAttnProcessor2_0(hidden_size=m.query_dim, cross_attention_dim=cross,
                                                num_tokens=(IP_ADAPTER_TOKENS,))
                      for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
        projection = ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim,
                                     num_image_text_embeds=IP_ADAPTER_TOKENS)
        return nn.ModuleDict({"image_proj": projection, "ip_adapter": nn.ModuleList(processors)})

    return build


def _ours(cls_name: str) -> Callable[[], Any]:
    def build() -> Any:
        from processor.pipeline import control_preprocess

        return getattr(control_preprocess, cls_name)()

    return build


ADDONS = [
    Family("IP-Adapter SD 1.5", "`ip_adapter:` on SD 1.x", "apache-2.0",
           "h94/IP-Adapter (models/ip-adapter_sd15.safetensors, models/image_encoder)",
           {"adapter": _ip_adapter(UNET_SD15, CLIP_VISION_H["projection_dim"]),
            "image_encoder": _clip_vision(CLIP_VISION_H)}),
    Family("IP-Adapter SDXL", "`ip_adapter:` on SDXL", "apache-2.0",
           "h94/IP-Adapter (sdxl_models/ip-adapter_sdxl.safetensors, sdxl_models/image_encoder)",
           {"adapter": _ip_adapter(UNET_SDXL, CLIP_VISION_BIG_G["projection_dim"]),
            "image_encoder": _clip_vision(CLIP_VISION_BIG_G)}),
    Family("ControlNet SD 1.5 (v1.0 canny, v1.1 depth / lineart / softedge)", "`control:` on SD 1.x, each",
           "openrail", "lllyasviel/sd-controlnet-canny, lllyasviel/control_v11f1p_sd15_depth, "
           "lllyasviel/control_v11p_sd15_lineart", {"controlnet": _diffusers("ControlNetModel", CONTROLNET_SD15)}),
    Family("ControlNet SDXL canny", "`control:` on SDXL", "openrail++", "diffusers/controlnet-canny-sdxl-1.0",
           {"controlnet": _diffusers("ControlNetModel", CONTROLNET_SDXL)}),
    Family("Depth Anything V2 Small", "`control: depth` preprocessor", "apache-2.0",
           "depth-anything/Depth-Anything-V2-Small-hf", {"depth": _depth_anything}),
    Family("Lineart generator (Informative Drawings)", "`control: lineart` preprocessor", "other",
           "lllyasviel/Annotators (sk_model.pth)", {"lineart": _ours("LineartGenerator")}),
    Family("HED (ControlNet Apache-2.0)", "`control: softedge` preprocessor", "apache-2.0",
           "lllyasviel/Annotators (ControlNetHED.pth)", {"hed": _ours("HedNetwork")}),
    Family("CLIP ViT-L/14 scorer", "`pipeline.clip_score`", "mit", "openai/clip-vit-large-patch14",
           {"clip": _clip_model}),
    Family("Captioner (CLIP Interrogator: ViT-L-14 + BLIP large)", "`caption` (every style that takes a prompt)",
           "mit, bsd-3-clause", "ViT-L-14/openai (open_clip; the same shapes as openai/clip-vit-large-patch14), "
           "Salesforce/blip-image-captioning-large", {"clip": _clip_model, "blip": _blip_large}),
]

#: Shipped styles (config.yaml) that load add-ons: style -> (base family, add-ons; one entry per copy loaded).
SHIPPED: dict[str, tuple[str, tuple[str, ...]]] = {
    "modern-disney-held": (FAMILIES[0].name, ("ControlNet SD 1.5 (v1.0 canny, v1.1 depth / lineart / softedge)",
                                              "ControlNet SD 1.5 (v1.0 canny, v1.1 depth / lineart / softedge)",
                                              "Depth Anything V2 Small", "Lineart generator (Informative Drawings)")),
    "modern-disney-look": (FAMILIES[0].name, ("IP-Adapter SD 1.5",)),
}


@dataclass(frozen=True)
class StyleTotal:
    """A shipped style's weights: its base family and the add-ons it names (captioner not included)."""

    style: str
    base: Counted
    addons: tuple[Counted, ...]

    @property
    def params(self) -> int:
        return self.base.params + sum(a.params for a in self.addons)

    def gib(self, bytes_per_param: float = FP16_BYTES) -> float:
        return self.params * bytes_per_param / GIB


def shipped_totals(bases: Sequence[Counted], addons: Sequence[Counted]) -> list[StyleTotal]:
    by_name = {c.name: c for c in [*bases, *addons]}
    return [StyleTotal(style, by_name[base], tuple(by_name[a] for a in parts))
            for style, (base, parts) in SHIPPED.items()]


def addon_table(rows: Sequence[Counted], bytes_per_param: float = FP16_BYTES) -> str:
    """README's add-ons table: one row per add-on model."""
    lines = [f"| add-on | loaded by | models | parameters | weights at {bytes_per_param:g} B/param | licence |",
             "|---|---|---|---:|---:|---|"]
    for a in rows:
        parts = " + ".join(f"{name} {n / 1e6:.1f} M" for name, n in a.components.items())
        lines.append(f"| {a.name} | {a.runs_as} | {a.models} | {a.params / 1e6:.1f} M"
                     f"{' (' + parts + ')' if len(a.components) > 1 else ''} | {a.gib(bytes_per_param):.2f} GiB "
                     f"| {a.license} |")
    return "\n".join(lines)


def totals_lines(totals: Sequence[StyleTotal], bytes_per_param: float = FP16_BYTES) -> str:
    return "\n".join(f"- {t.style}: {t.params / 1e9:.2f} B parameters, {t.gib(bytes_per_param):.1f} GiB "
                     f"({t.base.name.split(' (')[0]} {t.base.params / 1e9:.2f} B + "
                     + " + ".join(f"{a.name.split(' (')[0]} {a.params / 1e6:.1f} M" for a in t.addons) + ")"
                     for t in totals)


def count(build: Callable[[], Any]) -> int:
    """Parameters of the module ``build`` makes, on the meta device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def counted(family: Family) -> Counted:
    dtype = choose_dtype("auto", table_row(family.table), on_gpu=True) if family.table is not None else None
    return Counted(family.name, family.runs_as, family.license, family.models,
                   {name: count(build) for name, build in family.components.items()}, dtype)


def table(rows: Sequence[Counted], bytes_per_param: float = FP16_BYTES) -> str:
    """README's families table: one row per family."""
    lines = [f"| family | style engine | parameters | weights at {bytes_per_param:g} B/param | largest component "
             "| licence |", "|---|---|---:|---:|---|---|"]
    for f in rows:
        big, n = f.largest
        lines.append(f"| {f.name} | {f.runs_as} | {f.params / 1e9:.2f} B | {f.gib(bytes_per_param):.1f} GiB | "
                     f"{big} {n / 1e9:.2f} B | {f.license} |")
    return "\n".join(lines)


def component_table(rows: Sequence[Counted], bytes_per_param: float = FP16_BYTES) -> str:
    """Parameters per component, the total, and what ``offload: model`` holds at a time."""
    lines = [f"| family | components (parameters) | total | weights at {bytes_per_param:g} B/param "
             "| largest component |", "|---|---|---|---|---|"]
    for f in rows:
        parts = ", ".join(f"{name} {n / 1e9:.2f}B" for name, n in f.components.items())
        lines.append(f"| {f.name} | {parts} | {f.params / 1e9:.2f}B | {f.gib(bytes_per_param):.1f} GiB "
                     f"| {f.largest[1] * bytes_per_param / GIB:.1f} GiB |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Counted]:
    parser = argparse.ArgumentParser(prog="python -m bench.family_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes-per-param", type=float, default=FP16_BYTES, help="2: float16/bfloat16; 4: float32")
    parser.add_argument("--family", action="append", help="only these families (by name), e.g. 'FLUX.1-schnell'")
    parser.add_argument("--components", action="store_true", help="parameters per component")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--video", action="store_true",
                        help="only the image-to-video families (engine: animate: SVD, Wan 2.x, LTX-Video)")
    parser.add_argument("--addons", action="store_true",
                        help="the add-on models (IP-Adapters, ControlNets, preprocessors, CLIP scorer, captioner) "
                        "instead of the families, and the shipped styles' totals")
    args = parser.parse_args(argv)
    pool = ADDONS if args.addons else VIDEO_FAMILIES if args.video else FAMILIES + VIDEO_FAMILIES
    chosen = [f for f in pool if not args.family or f.name in args.family]
    if args.family and len(chosen) < len(set(args.family)):
        known = "; ".join(f.name for f in pool)
        parser.error(f"--family: unknown {sorted(set(args.family) - {f.name for f in chosen})}; known: {known}")
    rows = [counted(f) for f in chosen]
    if args.addons and not args.json:
        print(addon_table(rows, args.bytes_per_param))
        if not args.family:
            print("\nShipped styles with add-ons (base + add-ons; the captioner comes on top):")
            print(totals_lines(shipped_totals([counted(FAMILIES[0])], rows), args.bytes_per_param))
    elif args.json:
        print(json.dumps([{"name": f.name, "runs_as": f.runs_as, "license": f.license, "models": f.models,
                           "components": f.components, "params": f.params, "dtype": f.dtype,
                           "gib": round(f.gib(args.bytes_per_param), 3)} for f in rows], indent=2))
    elif args.components:
        print(component_table(rows, args.bytes_per_param))
    else:
        print(table(rows, args.bytes_per_param))
    return rows


if __name__ == "__main__":
    main()

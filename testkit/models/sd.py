"""Tiny random-weight Stable Diffusion pipelines and their add-ons (SD 1.x, instruct-pix2pix,
SDXL and its refiner, inpainting, LoRA, ControlNet), built offline from small configs.

Each is written with ``save_pretrained(safe_serialization=True)`` and then loaded by the tests through
``processor.models.loader`` exactly like a production model folder. The VAE keeps Stable Diffusion's
four blocks (an 8x downsampling factor), so a 64 px image is an 8x8 latent. The CLIP tokenizer is
built from the BPE merges open_clip ships (a prefix of them), or from a byte-level vocabulary when
open_clip is not installed.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

#: Pixels: the tiny models' native long side (UNet sample size 8 x VAE factor 8).
TINY_NATIVE = 64
#: BPE merges kept from open_clip's vocabulary (the full 48,894 would only make embeddings bigger).
TINY_MERGES = 2000
#: Text encoder width (also the SD UNet's cross-attention width).
TEXT_WIDTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    merges: list[tuple[str, str]] = []
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin:
        bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
        if bpe.exists():
            lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 1 + TINY_MERGES]
            merges = [tuple(line.split()) for line in lines if len(line.split()) == 2]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(merges))
    tokenizer.model_max_length = 77
    return tokenizer


def _text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="gelu", **extra,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        sample_size=TINY_NATIVE,
    )


def _scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1, set_alpha_to_one=False)


def _unet(in_channels: int = 4, **extra):
    from diffusers import UNet2DConditionModel

    options = dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_NATIVE // 8, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_WIDTH, attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    options.update(extra)
    return UNet2DConditionModel(**options)


def build_sd(path: Path, *, in_channels: int = 4, unet_options: dict | None = None) -> Path:
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    parts = dict(unet=_unet(in_channels, **(unet_options or {})), vae=_vae(),
                 text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer, scheduler=_scheduler(),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = StableDiffusionInstructPix2PixPipeline if in_channels == 8 else StableDiffusionPipeline
    cls(**parts).save_pretrained(path, safe_serialization=True)
    return path


def build_sdxl(path: Path) -> Path:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = _unet(
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(), scheduler=scheduler,
        text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=TEXT_WIDTH)),
        tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_sdxl_refiner(path: Path, base: Path) -> Path:
    """A tiny SDXL refiner for the SDXL base in ``base``: no first text encoder (the real refiner
    has none), a UNet that reads only the second encoder's width and an aesthetic-score time
    embedding (5 time ids), and the base's own VAE and second text encoder saved beside it, as
    stabilityai's refiner repo ships them."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(4)
    unet = _unet(
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=5 * 8 + TEXT_WIDTH,
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    StableDiffusionXLImg2ImgPipeline(
        unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None,
        vae=AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2", use_safetensors=True),
        tokenizer_2=tiny_tokenizer(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    ).save_pretrained(path, safe_serialization=True)
    return path



def build_lora(path: Path, unet_folder: Path) -> Path:
    """A LoRA for the UNet in ``unet_folder`` (random, non-zero B matrices so it visibly changes
    outputs), saved as diffusers' ``pytorch_lora_weights.safetensors`` in ``path``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    path.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path



#: The ControlNet layers diffusers zero-initialises (its output convolutions).
ZERO_INIT_CONTROLNET = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")


def build_controlnet(path: Path, unet_folder: Path, *, seed: int = 2) -> Path:
    """A tiny ControlNet for the UNet in ``unet_folder`` (``ControlNetModel.from_unet``: its
    encoder copied, a conditioning embedding added). diffusers zero-initialises the output
    convolutions, which would make any ControlNet a no-op; they get random weights here so a test
    can tell a steered variant from a free one."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True)
    # Four embedding widths: three stride-2 convolutions, the 8x of the VAE, as the real ones.
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(ZERO_INIT_CONTROLNET):
                param.normal_(0.0, 0.2)
    net.save_pretrained(path, safe_serialization=True)
    return path



def build_inpaint(path: Path) -> Path:
    """A tiny Stable Diffusion inpainting pipeline: a 9-channel UNet (4 noisy latents + 1 mask + 4
    masked-image latents), the same VAE, text encoder and tokenizer as ``build_sd``."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    StableDiffusionInpaintPipeline(
        unet=_unet(9), vae=_vae(), text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


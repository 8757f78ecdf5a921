"""Tiny random-weight FLUX.1 and Stable Diffusion 3 pipelines, built offline from configs.

Both families are rectified-flow transformers over a 16-channel VAE latent and read a T5 encoder
beside CLIP. The T5 tokenizer is a ``tokenizers`` Unigram model trained here on a few words and
saved as ``T5TokenizerFast`` (``tokenizer.json``), so nothing is downloaded. The VAE keeps four
blocks (the real 8x factor): 64 px is an 8x8 latent, packed into 2x2 patches (16 tokens).
"""

from __future__ import annotations

from pathlib import Path

from testkit.models.sd import TEXT_WIDTH, TINY_NATIVE, _text_config, tiny_tokenizer

#: T5 width for FLUX (its transformer's ``joint_attention_dim``).
FLUX_T5_WIDTH = 32
#: T5 width for SD 3: at least both CLIP widths side by side, which SD 3 pads up to the T5 width.
SD3_T5_WIDTH = 2 * TEXT_WIDTH
#: Words the tiny T5 tokenizer is trained on (prompts outside them still tokenize, piece by piece).
T5_WORDS = ("a toy bear robot car cartoon pixar disney character 3d render modern style photo of on table "
            "red blue green plush wooden blurry ugly put waterfall in the background make it").split()


def tiny_t5_tokenizer():
    """A ``T5TokenizerFast`` over a Unigram model trained on ``T5_WORDS`` (pad 0, eos 1, unk 2, as T5)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator([" ".join(T5_WORDS)] * 4 + T5_WORDS, trainer=trainer)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)


def _t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=37, d_kv=8, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _vae16(scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=1, norm_num_groups=8,
        sample_size=TINY_NATIVE, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=scaling, shift_factor=shift,
    )


def build_flux(path: Path, *, guidance_embeds: bool = True, kontext: bool = False) -> Path:
    """FLUX.1 dev-like (``guidance_embeds``: distilled guidance) or schnell-like (without); with
    ``kontext`` saved as a ``FluxKontextPipeline`` (the same transformer: Kontext reads the photo's
    latents as extra tokens, not extra channels)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    clip = tiny_tokenizer()
    t5 = tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=FLUX_T5_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6), guidance_embeds=guidance_embeds,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=guidance_embeds, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    (FluxKontextPipeline if kontext else FluxPipeline)(
        transformer=transformer, vae=_vae16(0.3611, 0.1159), scheduler=scheduler,
        text_encoder=CLIPTextModel(_text_config(clip)), tokenizer=clip,
        text_encoder_2=_t5(t5, FLUX_T5_WIDTH), tokenizer_2=t5,
    ).save_pretrained(path, safe_serialization=True)
    return path


def build_kontext(path: Path) -> Path:
    return build_flux(path, kontext=True)


def build_sd3(path: Path) -> Path:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    clip = tiny_tokenizer()
    t5 = tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=TINY_NATIVE // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=SD3_T5_WIDTH, pooled_projection_dim=2 * TEXT_WIDTH, pos_embed_max_size=16,
    )
    StableDiffusion3Pipeline(
        transformer=transformer, vae=_vae16(1.5305, 0.0609), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(_text_config(clip, projection_dim=TEXT_WIDTH)), tokenizer=clip,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(clip, projection_dim=TEXT_WIDTH)), tokenizer_2=clip,
        text_encoder_3=_t5(t5, SD3_T5_WIDTH), tokenizer_3=t5,
    ).save_pretrained(path, safe_serialization=True)
    return path


def build_flow_lora(path: Path, model: Path, *, seed: int = 1) -> Path:
    """A LoRA for the transformer of the FLUX.1 (or Kontext), SD 3 or Qwen-Image(-Edit) folder
    ``model`` (peft on its attention projections, random non-zero B matrices so it visibly changes
    outputs), saved as diffusers' ``pytorch_lora_weights.safetensors`` in ``path``: the layout
    diffusers' FLUX / SD 3 / Qwen-Image LoRA training scripts write."""
    import json

    import torch
    from diffusers import (
        FluxPipeline,
        FluxTransformer2DModel,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from peft import LoraConfig, get_peft_model_state_dict

    name = json.loads((model / "model_index.json").read_text())["_class_name"]
    transformer_cls, pipeline_cls = ((FluxTransformer2DModel, FluxPipeline) if "Flux" in name
                                     else (QwenImageTransformer2DModel, QwenImagePipeline) if "QwenImage" in name
                                     else (SD3Transformer2DModel, StableDiffusion3Pipeline))
    torch.manual_seed(seed)
    transformer = transformer_cls.from_pretrained(model / "transformer", use_safetensors=True)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    path.mkdir(parents=True, exist_ok=True)
    pipeline_cls.save_lora_weights(
        path, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True)
    return path

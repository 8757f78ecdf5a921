"""A tiny random-weight Qwen-Image-Edit pipeline (``QwenImageEditPipeline`` or ``...PlusPipeline``),
built offline from configs.

Qwen-Image-Edit reads the instruction and the photo with a Qwen2.5-VL model (its text encoder), so
the folder holds a ``processor`` (``Qwen2VLProcessor``: a Qwen2.5-VL image processor plus the
tokenizer) beside the ``tokenizer``. The tokenizer is a byte-level BPE trained here with
``tokenizers`` on a few words, with the chat and vision
special tokens the template uses, saved as ``Qwen2Tokenizer``; nothing is downloaded. The VAE keeps
three downsamplings (the real 8x factor); its latents are packed in 2x2 patches, as the real one's.
"""

from __future__ import annotations

from pathlib import Path

#: The special tokens Qwen-Image-Edit's prompt templates use (chat turns, one image slot).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
#: Words the tiny tokenizer is trained on besides the templates (others still tokenize, byte by byte).
WORDS = ("describe the image user system assistant put a waterfall in the background make it red cartoon toy "
         "bear robot blurry ugly picture").split()
#: Pixels the tiny image processor lets through to the vision tower (28 x 28 patches of 14 px, merged 2x2:
#: 4 image tokens), however large the photo the pipeline hands it.
VISION_PIXELS = 56 * 56
#: Width of the tiny Qwen2.5-VL text model (the transformer's ``joint_attention_dim``).
TEXT_WIDTH = 16


def tiny_qwen_tokenizer():
    """A ``Qwen2Tokenizer`` over a byte-level BPE trained on ``WORDS``. The pipeline drops the first
    64 tokens of every encoded template (the real system prompt's length); byte-level pieces of a
    small vocabulary make the tiny one longer than that, so the instruction's tokens survive."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + WORDS, trainer=trainer)
    return Qwen2Tokenizer(tokenizer_object=tok, unk_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", model_max_length=32768)


def build_qwen_edit(path: Path, *, plus: bool = False) -> Path:
    """Saves a tiny Qwen-Image-Edit pipeline to ``path`` (``plus``: as ``QwenImageEditPlusPipeline``)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": TEXT_WIDTH, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": TEXT_WIDTH},
        hidden_size=TEXT_WIDTH, vocab_size=len(tokenizer), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessor(min_pixels=VISION_PIXELS, max_pixels=VISION_PIXELS)
    z_dim = 4
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    # The real model's scheduler: dynamic shifting by image size (the pipeline passes ``mu``).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192)
    (QwenImageEditPlusPipeline if plus else QwenImageEditPipeline)(
        transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder=Qwen2_5_VLForConditionalGeneration(config), tokenizer=tokenizer,
        processor=Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=Qwen2VLVideoProcessor()),  # required, unused: photos only
    ).save_pretrained(path, safe_serialization=True)
    return path

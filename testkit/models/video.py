"""Tiny random-weight image-to-video pipelines (Stable Video Diffusion, Wan 2.x image-to-video,
LTX-Video), built offline from small configs and saved with ``save_pretrained``, so the tests load
them through ``processor.models.loader`` exactly like a production model folder.

Each keeps its family's real compression factors, so a 64 px picture is the latent its family
would make of it: SVD's VAE has four blocks (8x, no temporal compression), Wan's VAE 8x in space
and 4x in time (frames 4k + 1), LTX's VAE 32x in space (4x4 patches, three 2x blocks) and 8x in
time (frames 8k + 1). SVD reads no text: its image encoder is a CLIP vision tower at image size
224 (the pipeline resizes the photo to 224 x 224 for it), with 32 px patches to stay tiny. Wan and
LTX read a T5 prompt through the offline tokenizer of ``testkit.models.flow``.
"""

from __future__ import annotations

from pathlib import Path

from testkit.models.flow import tiny_t5_tokenizer

#: Frames the tiny SVD's UNet is built for (its ``num_frames``: a style's default clip length).
TINY_SVD_FRAMES = 4
#: Width of the tiny T5 encoders and of the transformers' text input.
VIDEO_T5_WIDTH = 32
#: The CLIP vision input Stable Video Diffusion resizes the photo to (fixed in its pipeline).
SVD_IMAGE_SIZE = 224


def _clip_vision(image_size: int, patch: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        image_size=image_size, patch_size=patch))


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=VIDEO_T5_WIDTH, d_ff=37, d_kv=8,
                                   num_layers=1, num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0)).eval()


def build_svd(path: Path, *, frames: int = TINY_SVD_FRAMES) -> Path:
    """Stable Video Diffusion: a spatio-temporal UNet (8-channel input: noise + the photo's latent),
    the temporal-decoder VAE and a CLIP vision encoder; the scheduler is SVD's own EulerDiscrete
    (v-prediction, Karras sigmas)."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), layers_per_block=1,
        cross_attention_dim=16, num_attention_heads=(2, 4), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=frames)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=1,
        latent_channels=4, sample_size=64)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    StableVideoDiffusionPipeline(
        vae=vae, image_encoder=_clip_vision(SVD_IMAGE_SIZE, 32), unet=unet, scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=SVD_IMAGE_SIZE, size=SVD_IMAGE_SIZE),
    ).save_pretrained(path, safe_serialization=True)
    return path


def _wan_vae(z_dim: int = 16):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def build_wan_i2v(path: Path, *, image_encoder: bool = True) -> Path:
    """Wan image-to-video: a transformer over 36 channels (16 of noise, 4 of the first-frame mask,
    16 of the photo's latent), the causal 3D VAE and a T5 text encoder; with ``image_encoder``
    (Wan 2.1) a CLIP vision encoder too, without (Wan 2.2 A14B's layout) none."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=36, out_channels=16,
        text_dim=VIDEO_T5_WIDTH, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=16 if image_encoder else None,
        added_kv_proj_dim=16 if image_encoder else None)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    extra = {}
    if image_encoder:
        extra = {"image_encoder": _clip_vision(32, 8), "image_processor": CLIPImageProcessor(crop_size=32, size=32)}
    WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_t5(tokenizer), vae=_wan_vae(), scheduler=scheduler,
        transformer=transformer, **extra,
    ).save_pretrained(path, safe_serialization=True)
    return path


def build_wan_ti2v(path: Path) -> Path:
    """Wan 2.2 TI2V: saved as a text-to-video ``WanPipeline`` with ``expand_timesteps`` (as
    Wan-AI/Wan2.2-TI2V-5B-Diffusers is), a transformer over 48 channels and the residual VAE that
    compresses 16x in space (2x2 patches, then 8x) to a 48-channel latent; no image encoder (the
    photo's latent replaces the first frame's)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    vae = AutoencoderKLWan(base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                           patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48,
                           latents_std=[1.0] * 48)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=48, out_channels=48,
        text_dim=VIDEO_T5_WIDTH, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=_t5(tokenizer), vae=vae, scheduler=scheduler, transformer=transformer,
                expand_timesteps=True).save_pretrained(path, safe_serialization=True)
    return path


def build_ltx(path: Path) -> Path:
    """LTX-Video (saved as its text-to-video ``LTXPipeline``, as Lightricks/LTX-Video is): a
    transformer over 128 latent channels, the video VAE (32x spatial, 8x temporal) and a T5 encoder."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    transformer = LTXVideoTransformer3DModel(
        in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=VIDEO_T5_WIDTH)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=4,
        patch_size_t=1, encoder_causal=True, decoder_causal=False)
    LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(tokenizer), tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(path, safe_serialization=True)
    return path

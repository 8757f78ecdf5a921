"""Image to video on the GPU: how long a Stable Video Diffusion clip takes, and its peak memory.

The SVD architecture at full size (the spatio-temporal UNet, the temporal-decoder VAE, the
OpenCLIP ViT-H/14 image encoder: ``bench.family_memory``'s published configs) is built with random
weights directly on the device (speed does not depend on weight values; nothing is downloaded or
saved) and runs the calls ``engine: animate`` makes (``processor.pipeline.animate``: the family
table's defaults for the motion bucket, noise augmentation, the 1 -> 3 guidance ramp and
``decode_chunk_size``), one untimed warm-up clip, then ``--clips`` timed ones. Printed: seconds per
clip and per frame, UNet calls and samples per clip (counted by a forward hook: one call per step,
two clips in it under guidance), the GPU's peak allocated memory, and, where PyAV is installed, the
seconds the MP4 and WebP encoders take on the CPU for the clip.

``--offload model`` runs the same clip with diffusers' model CPU offload (the ``offload`` switch an
animate style sets for a GPU smaller than its model). ``--tiny`` runs a tiny SVD on the CPU in
seconds (the rehearsal of the GPU suite's step).

    python -m bench.gpu_video                                  # a CUDA machine: 14 frames at 1024x576
    python -m bench.gpu_video --frames 25 --steps 25            # SVD-XT's clip
    python -m bench.gpu_video --offload model
    python -m bench.gpu_video --tiny --device cpu
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from bench.common import machine, report

#: SVD's clip on a GPU: frames, working size (1024 x 576, its native), steps; tiny on the CPU.
FULL_FRAMES, FULL_SIZE, FULL_STEPS = 14, (1024, 576), 25
TINY_FRAMES, TINY_SIZE, TINY_STEPS = 4, (64, 48), 2
#: Clips timed after the warm-up one.
DEFAULT_CLIPS = 2


def svd_pipeline(device: str, dtype: Any, *, tiny: bool) -> Any:
    """A ``StableVideoDiffusionPipeline`` with random weights: SVD's published shapes, or the tiny
    test model's (``testkit.models.video``), built on ``device``."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from bench.family_memory import CLIP_VISION_H, VAE_SVD

    torch.manual_seed(0)
    with torch.device(device):  # initialising 2.2 B parameters is much quicker on a GPU
        if tiny:
            unet = UNetSpatioTemporalConditionModel(
                sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16,
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                num_frames=TINY_FRAMES)
            vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                               down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4)
            vision = CLIPVisionConfig(hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=24, image_size=224, patch_size=32)
        else:
            unet, vae = UNetSpatioTemporalConditionModel(), AutoencoderKLTemporalDecoder(**VAE_SVD)
            vision = CLIPVisionConfig(**CLIP_VISION_H)
        encoder = CLIPVisionModelWithProjection(vision)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor(crop_size=224, size=224))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny SVD (64 px, 4 frames), for the CPU")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                        help="auto: the family table's on a GPU (float16 for SVD), float32 on the CPU")
    parser.add_argument("--frames", type=int, default=None, help=f"frames per clip (default {FULL_FRAMES})")
    parser.add_argument("--steps", type=int, default=None, help=f"scheduler steps (default {FULL_STEPS})")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS, help="clips timed after one warm-up clip")
    parser.add_argument("--offload", default="none", choices=["none", "model"],
                        help="model: diffusers' enable_model_cpu_offload (an animate style's offload: model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from processor.models.families import FamilyId, VideoKnob, choose_dtype, family
    from testkit.images import photo_image

    args = parse_args(argv)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    row = family(FamilyId.SVD)
    assert row.video is not None
    dtype = getattr(torch, choose_dtype(args.dtype, row, on_gpu=device.startswith("cuda")))
    frames = args.frames or (TINY_FRAMES if args.tiny else FULL_FRAMES)
    steps = args.steps or (TINY_STEPS if args.tiny else FULL_STEPS)
    size = TINY_SIZE if args.tiny else FULL_SIZE
    width, height = args.width or size[0], args.height or size[1]
    started = time.perf_counter()
    pipe = svd_pipeline("cpu" if args.offload == "model" else device, dtype, tiny=args.tiny)
    if args.offload == "model" and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    build_s = time.perf_counter() - started
    knobs = row.video.defaults
    kwargs = {"image": photo_image(width, height, seed=1), "width": width, "height": height, "num_frames": frames,
              "num_inference_steps": steps, "fps": row.video.fps,
              "motion_bucket_id": knobs[VideoKnob.MOTION_BUCKET_ID],
              "noise_aug_strength": knobs[VideoKnob.NOISE_AUG_STRENGTH],
              "min_guidance_scale": knobs[VideoKnob.MIN_GUIDANCE], "max_guidance_scale": knobs[VideoKnob.MAX_GUIDANCE],
              "decode_chunk_size": int(knobs[VideoKnob.DECODE_CHUNK_SIZE]), "output_type": "pt"}
    calls: list[int] = []

    def count(_module: Any, args_: tuple, kw: dict) -> None:
        calls.append(int((args_[0] if args_ else kw["sample"]).shape[0]))  # clips in this call

    hook = pipe.unet.register_forward_pre_hook(count, with_kwargs=True)

    def clip(seed: int) -> Any:
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            return pipe(**kwargs, generator=generator).frames[0]

    clip(0)  # warm-up: cuDNN's algorithm search, the allocator's first pools
    calls.clear()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i in range(args.clips):
        out = clip(1 + i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.clips
    hook.remove()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "dtype": str(dtype).replace("torch.", ""), "offload": args.offload, "frames": frames,
        "size": f"{width}x{height}", "steps": steps, "build_s": round(build_s, 2), "s_per_clip": round(seconds, 3),
        "s_per_frame": round(seconds / frames, 4), "unet_calls_per_clip": len(calls) // args.clips,
        "unet_evaluations_per_clip": sum(calls) // args.clips,
    }
    if device.startswith("cuda"):
        results["gpu_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    results |= _encode_seconds(out, row.video.fps)
    report(results | machine(), as_json=args.json)
    return results


def _encode_seconds(frames: Any, fps: int) -> dict[str, Any]:
    """Seconds the MP4 and WebP encoders take for the clip (on the CPU), where PyAV is installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        return {"encode": "skipped: PyAV is not installed"}
    from processor.pipeline.sampling import to_pil
    from processor.pipeline.video_encode import encode_mp4, encode_webp

    images = to_pil(frames)
    started = time.perf_counter()
    mp4 = encode_mp4(images, fps)
    mp4_s = time.perf_counter() - started
    started = time.perf_counter()
    webp = encode_webp(images, fps)
    return {"mp4_encode_s": round(mp4_s, 3), "webp_encode_s": round(time.perf_counter() - started, 3),
            "mp4_bytes": len(mp4), "webp_bytes": len(webp)}


if __name__ == "__main__":
    main()

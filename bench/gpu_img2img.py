"""Stable Diffusion 1.5 img2img: the processor's path against the notebook's way, same work, one run.

The SD 1.5 architecture at full size (UNet 320/640/1280/1280 with 768-wide cross-attention, the
4-block VAE, the 12-layer CLIP ViT-L text encoder) is built from configs with random weights (speed
does not depend on weight values; nothing is downloaded), saved as safetensors and loaded back.

- processor: ``Img2ImgEngine`` through ``processor.models.loader`` (the worker's code and switches), every
  round one batched call for all variants (each variant its own chain of rounds).
- notebook: the original prototype's calls: ``StableDiffusionImg2ImgPipeline`` in float16 (float32
  on the CPU), one call per round on one image, the final round with ``num_images_per_prompt``.

Both run the notebook's 4-round schedule (strength/guidance 0.7/20, 0.6/18, 0.5/16, 0.4/14) at the
same ``--steps`` and the same scheduler on a 512x512 input and produce ``--variants`` images per
input. Printed: images per second for each and their ratio; the UNet's FLOPs per sample (counted
with ``torch.utils.flop_counter.FlopCounterMode`` on one UNet call) and its achieved FLOP/s, in the
processor's whole run and in UNet calls alone, as fractions of the bf16 matmul peak measured in the
same run. ``--tiny`` runs tiny configs on the CPU in seconds (the CI smoke test).

``--batch-inputs N`` also times the processor with N inputs in one call (``run.batch_inputs``:
``Img2ImgEngine.render_many``, every round one pipeline call over all their variants), N inputs per
timed run, and prints its images per second against one input per call.

``--shared-rounds N`` also times the processor with ``shared_rounds: N`` (the first N rounds run
once, only the rest per variant; the notebook shares 3 of its 4 rounds) in the same run, and
prints its ratio against ``shared_rounds: 0``. UNet sample-steps (UNet calls x batch, counted by a
forward hook) per input and per output image are printed for every path: they do not depend on
the hardware.

    python -m bench.gpu_img2img                     # a CUDA machine
    python -m bench.gpu_img2img --tiny              # anywhere
    python -m bench.gpu_img2img --shared-rounds 3   # also the notebook's cost profile in the processor
    python -m bench.gpu_img2img --batch-inputs 4    # also 4 inputs per pipeline call
    python -m bench.gpu_img2img --profile unet.txt  # also where the time goes (torch.profiler tables)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, report

#: The notebook's schedule: (strength, guidance) per round.
NOTEBOOK_ROUNDS = ((0.7, 20.0), (0.6, 18.0), (0.5, 16.0), (0.4, 14.0))
DEFAULT_STEPS = 50
DEFAULT_VARIANTS = 5
#: Inputs timed per path (after one untimed warm-up input each).
DEFAULT_IMAGES = 2
#: Pixels: SD 1.5's native size; the tiny models' native size.
FULL_SIZE, TINY_SIZE = 512, 64
#: Matrix side and repetitions of the bf16 peak measurement (GPU; CPU).
PEAK_N_GPU, PEAK_REPS_GPU = 8192, 30
PEAK_N_CPU, PEAK_REPS_CPU = 256, 3
#: UNet calls timed alone for the isolated FLOP/s figure.
UNET_ALONE_CALLS_GPU, UNET_ALONE_CALLS_CPU = 20, 3
#: UNet calls recorded by ``--profile``; rows of each profiler table.
PROFILE_UNET_CALLS, PROFILE_ROWS = 3, 25
PROMPT = "a toy cow, cartoon, Pixar, Disney character, 3D render, modern disney style"
NEGATIVE = "blurry, low quality"
STYLE = "bench"
SHARED_STYLE = "bench-shared"


def sd15_modules(device: str) -> tuple[Any, Any, Any, Any]:
    """The SD 1.5 UNet, VAE and CLIP text encoder with random weights, and a tokenizer, built on
    ``device`` (``"meta"`` allocates nothing: for counting parameters)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from testkit.models.sd import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()  # token ids only index the embedding; its vocabulary size is irrelevant
    with torch.device(device):  # initialising 1.1 B parameters is much quicker on a GPU
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        )
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    return unet, vae, text, tokenizer


def build_sd15(path: Path, device: str) -> Path:
    """The SD 1.5 architecture with random weights, saved as a diffusers folder (float16)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    unet, vae, text, tokenizer = sd15_modules(device)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
    return path


class UNetCounter:
    """Counts the samples every UNet call processes (a forward pre-hook on the module)."""

    def __init__(self, unet: Any) -> None:
        self.samples = 0
        self.calls = 0
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.samples += sample.shape[0]
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bf16_peak(device: str) -> float:
    """FLOP/s of a large bf16 matmul on ``device``: the ceiling the UNet is compared with."""
    import torch

    n, reps = (PEAK_N_GPU, PEAK_REPS_GPU) if device.startswith("cuda") else (PEAK_N_CPU, PEAK_REPS_CPU)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b  # warm-up (kernel selection)
    sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started)


def unet_flops_per_sample(unet: Any, latent: int, device: str, dtype: Any) -> tuple[float, Any]:
    """FLOPs of one UNet call per sample (counted on a batch of 2, as classifier-free guidance
    runs it), and the inputs used (for timing the UNet alone)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = getattr(unet, "_orig_mod", unet)  # count the eager module, not a compiled wrapper
    cross = module.config.cross_attention_dim
    inputs = (torch.randn(2, module.config.in_channels, latent, latent, device=device, dtype=dtype),
              torch.tensor(500, device=device), torch.randn(2, 77, cross, device=device, dtype=dtype))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(inputs[0], inputs[1], encoder_hidden_states=inputs[2])
    return counter.get_total_flops() / 2, inputs


def unet_alone(unet: Any, inputs: Any, batch: int, calls: int, device: str) -> float:
    """Seconds per UNet call at ``batch`` samples (after one warm-up call)."""
    import torch

    sample, t, text = inputs
    reps = -(-batch // sample.shape[0])
    sample, text = sample.repeat(reps, 1, 1, 1)[:batch], text.repeat(reps, 1, 1)[:batch]
    with torch.inference_mode():
        unet(sample, t, encoder_hidden_states=text)
        sync(device)
        started = time.perf_counter()
        for _ in range(calls):
            unet(sample, t, encoder_hidden_states=text)
        sync(device)
    return (time.perf_counter() - started) / calls


def profile_tables(path: Path, engine: Any, image: Any, inputs: Any, batch: int, device: str) -> None:
    """``torch.profiler`` tables (top ops by self GPU time; CPU time on the CPU) of one processor
    input (every round, VAE and text encoder included) and of a few UNet calls alone, written to
    ``path``: where the time goes when the UNet's fraction of the peak falls short."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    sample, t, text = inputs
    reps = -(-batch // sample.shape[0])
    sample, text = sample.repeat(reps, 1, 1, 1)[:batch], text.repeat(reps, 1, 1)[:batch]
    # Each title carries the wall seconds: against the table's "Self CUDA time total" they show
    # how long the GPU sat idle (launch overhead, host work between calls).
    sections = []
    started = time.perf_counter()
    with profile(activities=activities) as whole:
        engine(image)
        sync(device)
    wall = time.perf_counter() - started
    sections.append((f"one processor input (all rounds, {engine.style.variants} variants), {wall:.3f} s wall", whole))
    started = time.perf_counter()
    with torch.inference_mode(), profile(activities=activities) as alone:
        for _ in range(PROFILE_UNET_CALLS):
            engine.pipe.unet(sample, t, encoder_hidden_states=text)
        sync(device)
    wall = time.perf_counter() - started
    sections.append((f"{PROFILE_UNET_CALLS} UNet calls alone at batch {batch}, {wall:.3f} s wall", alone))
    with open(path, "w", encoding="utf-8") as fh:
        for title, prof in sections:
            fh.write(f"== {title}: top {PROFILE_ROWS} ops by {sort}\n")
            fh.write(prof.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS) + "\n\n")


def processor_engines(model: Path, args: argparse.Namespace, size: int) -> tuple[Any, Any]:
    """The processor's engine with ``shared_rounds: 0`` and, with ``--shared-rounds N``, a second
    one with ``shared_rounds: N`` on the same weights (one registry, one model loader); else None."""
    from processor.cli.compose import build_registry
    from processor.config import Settings

    def style(shared: int) -> dict[str, Any]:
        return {
            "engine": "img2img", "model": str(model), "prompt": PROMPT.split(",")[0],
            "trigger": PROMPT.split(",", 1)[1].strip(), "negative": NEGATIVE,
            "rounds": [{"strength": s, "guidance": g} for s, g in NOTEBOOK_ROUNDS],
            "steps": args.steps, "scheduler": "pndm", "variants": args.variants, "size": size,
            "shared_rounds": shared,
        }

    styles = {STYLE: style(0)} | ({SHARED_STYLE: style(args.shared_rounds)} if args.shared_rounds else {})
    settings = Settings(
        run={"styles": list(styles)},
        styles=styles,
        models={"device": args.device, "dtype": args.dtype, "performance": {
            "attention": args.attention, "compile_unet": args.compile,
            **({"channels_last": args.channels_last == "on"} if args.channels_last != "auto" else {}),
        }},
    )
    registry = build_registry(settings)
    registry.setup(list(styles))
    return registry.engine(STYLE), registry.engine(SHARED_STYLE) if args.shared_rounds else None


def notebook_pipeline(model: Path, device: str) -> Any:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    from processor.models.loader import _dtype_keyword

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                          use_safetensors=True, **{_dtype_keyword(): dtype})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def notebook_call(pipe: Any, image: Any, steps: int, variants: int) -> list[Any]:
    """The prototype's loop, as meant (its bug ran only two rounds): one image through every
    round but the last, then the last round with ``num_images_per_prompt``."""
    for strength, guidance in NOTEBOOK_ROUNDS[:-1]:
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength,
                     guidance_scale=guidance, num_inference_steps=steps).images[0]
    strength, guidance = NOTEBOOK_ROUNDS[-1]
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength, guidance_scale=guidance,
                num_inference_steps=steps, num_images_per_prompt=variants).images


def timed(run: Any, images: int, device: str, counter: UNetCounter, *, warmups: int = 1) -> tuple[float, int]:
    """Seconds for ``images`` inputs after ``warmups`` untimed warm-up inputs, and the outputs made;
    ``counter`` counts the timed inputs' UNet samples only."""
    for _ in range(warmups):
        run()
    sync(device)
    counter.samples = counter.calls = 0
    made = 0
    started = time.perf_counter()
    for _ in range(images):
        made += len(run())
    sync(device)
    return time.perf_counter() - started, made


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_img2img",
        description="SD 1.5 img2img at full size with random weights: the processor's Img2ImgEngine against the "
        "notebook's pipeline calls, same schedule (4 rounds 0.7/20 0.6/18 0.5/16 0.4/14), same steps and "
        "scheduler, on one input size. Prints images/s of each, their ratio, and the UNet's achieved FLOP/s as "
        "a fraction of the bf16 matmul peak measured in the same run.",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configs (64 px), for the CPU and the CI smoke test")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a local diffusers SD 1.x folder to use instead of building random weights "
                        "(real weights run at the same speed; the tests pass their tiny model)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"inputs timed per path after one warm-up input (default {DEFAULT_IMAGES})")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"scheduler steps per round (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--variants", type=int, default=DEFAULT_VARIANTS, help=f"images per input (default {DEFAULT_VARIANTS})"
    )
    parser.add_argument(
        "--size", type=int, default=None, help=f"input side in pixels (default {FULL_SIZE}; --tiny {TINY_SIZE})"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                        help="the processor's models.dtype (auto: float16 on CUDA, float32 on the CPU)")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"], help="models.performance.attention")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                        help="models.performance.channels_last (auto: on for CUDA)")
    parser.add_argument("--compile", action="store_true", help="models.performance.compile_unet (warm-up reported)")
    parser.add_argument("--shared-rounds", type=int, default=0, metavar="N",
                        help="also time the processor with styles.<name>.shared_rounds: N (0-"
                        f"{len(NOTEBOOK_ROUNDS) - 1}; the notebook shares {len(NOTEBOOK_ROUNDS) - 1}) and print its "
                        "ratio against shared_rounds 0 (default 0: not timed)")
    parser.add_argument("--batch-inputs", type=int, default=1, metavar="N",
                        help="also time the processor with N inputs in one call (run.batch_inputs), N inputs per "
                        "timed run, and print its ratio against one input per call (default 1: not timed)")
    parser.add_argument("--skip-notebook", action="store_true", help="measure the processor's path only")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="also write torch.profiler tables (top ops by self GPU time) of one processor input and "
                        f"of {PROFILE_UNET_CALLS} UNet calls alone to FILE (after the timed runs; not timed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from processor.config import ModelSettings
    from processor.models.loader import ModelLoader
    from processor.pipeline.diffusion import performance
    from testkit.images import photo_image

    args = build_parser().parse_args(argv)
    if args.images < 1 or args.steps < 3 or args.variants < 1 or args.batch_inputs < 1:
        raise SystemExit("--images, --variants and --batch-inputs must be >= 1 and --steps >= 3 "
                         "(0.4 x steps must be >= 1)")
    if not 0 <= args.shared_rounds < len(NOTEBOOK_ROUNDS):
        raise SystemExit(f"--shared-rounds must be 0-{len(NOTEBOOK_ROUNDS) - 1}: the schedule has "
                         f"{len(NOTEBOOK_ROUNDS)} rounds and the last one runs per variant")
    device = ModelLoader(ModelSettings(device=args.device)).device()
    size = args.size or (TINY_SIZE if args.tiny else FULL_SIZE)
    image = photo_image(size, size)
    described = args.model or ("tiny SD (test configs)" if args.tiny else "SD 1.5 architecture, random weights")
    results: dict[str, Any] = {"model": described,
                               "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                               "size": f"{size}x{size}", "variants": args.variants, "steps": args.steps,
                               "rounds": len(NOTEBOOK_ROUNDS), "images_timed": args.images,
                               "shared_rounds": args.shared_rounds}
    with tempfile.TemporaryDirectory(prefix="bench-sd-") as tmp:
        started = time.perf_counter()
        if args.model:
            model = Path(args.model)
        elif args.tiny:
            from testkit.models.sd import build_sd

            model = build_sd(Path(tmp) / "tiny-sd")
        else:
            model = build_sd15(Path(tmp) / "sd15-random", device)
        results["build_s"] = time.perf_counter() - started

        results["bf16_matmul_peak_tflops"] = bf16_peak(device) / 1e12
        engine, shared_engine = processor_engines(model, args, size)
        pipe = engine.pipe
        latent = size // int(getattr(pipe, "vae_scale_factor", 8))
        per_sample, inputs = unet_flops_per_sample(pipe.unet, latent, device, pipe.unet.dtype)
        counter = UNetCounter(pipe.unet)
        seconds, made = timed(lambda: engine(image), args.images, device, counter)
        counter.remove()
        timed_samples = counter.samples
        batch = 2 * args.variants  # classifier-free guidance doubles every batch
        alone_s = unet_alone(pipe.unet, inputs, batch, UNET_ALONE_CALLS_GPU if device.startswith("cuda")
                             else UNET_ALONE_CALLS_CPU, device)
        peak = results["bf16_matmul_peak_tflops"] * 1e12
        switches = performance(engine.switches, engine.vae_tiled)
        results |= {
            "processor_dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "processor_switches": ",".join(f"{k}={v}" for k, v in switches.items()),
            "processor_images_per_s": made / seconds,
            "processor_s_per_input": seconds / args.images,
            "unet_gflops_per_sample": per_sample / 1e9,
            "unet_samples_per_input": timed_samples / args.images,
            "unet_samples_per_image": timed_samples / made,
            "processor_unet_tflops": per_sample * timed_samples / seconds / 1e12,
            "processor_unet_fraction_of_peak": per_sample * timed_samples / seconds / peak,
            "unet_alone_batch": batch,
            "unet_alone_tflops": per_sample * batch / alone_s / 1e12,
            "unet_alone_fraction_of_peak": per_sample * batch / alone_s / peak,
        }
        if shared_engine is not None:
            # Same weights (shared_engine.pipe.unet is pipe.unet), same input, same run.
            counter = UNetCounter(shared_engine.pipe.unet)
            sh_seconds, sh_made = timed(lambda: shared_engine(image), args.images, device, counter)
            counter.remove()
            results |= {
                "shared_images_per_s": sh_made / sh_seconds,
                "shared_s_per_input": sh_seconds / args.images,
                "shared_unet_samples_per_input": counter.samples / args.images,
                "shared_unet_samples_per_image": counter.samples / sh_made,
                "shared_unet_fraction_of_peak": per_sample * counter.samples / sh_seconds / peak,
                "ratio_shared_over_unshared": (sh_made / sh_seconds) / (made / seconds),
                "unet_samples_ratio_unshared_over_shared": timed_samples / counter.samples,
            }
        if args.batch_inputs > 1:
            # The same engine, input and run: N inputs per call against one (``run.batch_inputs``).
            count = args.batch_inputs
            counter = UNetCounter(pipe.unet)
            b_seconds, b_made = timed(
                lambda: [v for made_one in engine.render_many([image] * count, [None] * count, [engine.style] * count)
                         for v in made_one], args.images, device, counter)
            counter.remove()
            results |= {
                "batch_inputs": count,
                "batched_images_per_s": b_made / b_seconds,
                "batched_s_per_input": b_seconds / (args.images * count),
                "batched_unet_fraction_of_peak": per_sample * counter.samples / b_seconds / peak,
                "ratio_batched_over_alone": (b_made / b_seconds) / (made / seconds),
            }
        if args.profile:
            profile_tables(Path(args.profile), engine, image, inputs, batch, device)
            results["profile"] = args.profile
        if not args.skip_notebook:
            del engine, pipe, shared_engine
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            nb = notebook_pipeline(model, device)
            counter = UNetCounter(nb.unet)
            nb_seconds, nb_made = timed(lambda: notebook_call(nb, image, args.steps, args.variants), args.images,
                                        device, counter)
            nb_samples = counter.samples
            counter.remove()
            results |= {
                "notebook_dtype": str(nb.unet.dtype).replace("torch.", ""),
                "notebook_images_per_s": nb_made / nb_seconds,
                "notebook_s_per_input": nb_seconds / args.images,
                "notebook_unet_samples_per_input": nb_samples / args.images,
                "notebook_unet_samples_per_image": nb_samples / nb_made,
                "notebook_unet_fraction_of_peak": per_sample * nb_samples / nb_seconds / peak,
                "ratio_processor_over_notebook": (made / seconds) / (nb_made / nb_seconds),
            }
            if "shared_images_per_s" in results:
                results["ratio_shared_over_notebook"] = (
                    results["shared_images_per_s"] / results["notebook_images_per_s"]
                )
    results |= machine()
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

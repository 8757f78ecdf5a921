"""``processor finetune``: the argparse wiring and the command.

It reads the training images (a local folder, or a bucket prefix: default ``training/<name>/``),
trains a LoRA on the base model's UNet, checkpoints to the output location (``--out DIR``, or the
bucket's ``models/loras/<name>/``), writes ``pytorch_lora_weights.safetensors`` and
``training_record.json`` there, and prints a config.yaml style that uses the LoRA.

A rerun with the same settings continues from the last checkpoint (a Kubernetes Job's retried pod
does this), and a rerun of a finished run changes nothing and prints the snippet again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from processor.cli.compose import build_captioner, build_store
from processor.config import Settings
from processor.errors import ConfigError
from processor.finetune.location import Location
from processor.finetune.record import LORA_NAME, RECORD_NAME, CaptionSource, Hyperparameters, Mode, TrainingRecord

log = logging.getLogger("processor.finetune")

#: Bucket prefix of a run's training images by default: ``training/<name>/``.
TRAINING_PREFIX = "training/"
#: Bucket prefix of a run's results by default: ``models/loras/<name>/``.
LORAS_PREFIX = "models/loras/"
DEFAULT_STEPS = 1000
#: LoRA rank: diffusers' LoRA examples' default; 4-16 is the usual range for a style.
DEFAULT_RANK = 4
DEFAULT_LR = 1e-4
DEFAULT_RESOLUTION = 512
DEFAULT_CHECKPOINT_EVERY = 250
#: Files of a run in its output location (what ``--fresh`` removes; anything else there is kept).
RUN_FILES = (LORA_NAME, RECORD_NAME, "validation.jpg")
RUN_FOLDERS = ("checkpoints/", "class_images/")
#: Hyperparameters a resumed run may change: more steps continue a finished schedule.
MAY_CHANGE_ON_RESUME = {"steps", "prediction_type"}


def add_parser(subparsers: Any, common_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from processor.finetune.data import DEFAULT_MIN_IMAGES

    p = subparsers.add_parser(
        "finetune", parents=[common_parent], help="train a LoRA on your images that a style can use",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs("Train a LoRA (low-rank adapter) on the UNet of a Stable Diffusion 1.x/2.x model "
        "from a folder of images, the way diffusers' LoRA training examples do. --mode style learns a look from "
        "captioned images; --mode subject (DreamBooth) learns your own toy under --instance-prompt.\n\n"
        "Images: --images DIR (a local folder) or a bucket prefix (default training/NAME/). Each is decoded and "
        "validated like a worker's input; bad files are skipped with the reason, and too few usable ones stop "
        "the run. Captions: --captions files reads photo.txt beside photo.jpg, auto runs the captioner "
        "(caption.* in the config; blip when caption.mode is none), none uses --prompt for all.\n\n"
        "Output: --out DIR, or the bucket's models/loras/NAME/: pytorch_lora_weights.safetensors and "
        "training_record.json (base model and revision, every hyperparameter, the images' keys and "
        "sha256s, the loss per step, time, device, versions). Every --checkpoint-every steps a checkpoint and "
        "a validation contact sheet (training photos rendered with the LoRA so far) go to checkpoints/step-N/. "
        "Rerunning the same command after a crash continues from the last checkpoint. It ends by printing a "
        "config.yaml style that uses the LoRA."),
        epilog="Examples:\n"
        "  processor finetune --name pixar --images ./pixar-stills --captions files \\\n"
        "      --base stable-diffusion-v1-5/stable-diffusion-v1-5 --steps 2000 --out ./loras/pixar\n"
        "  processor finetune --name my-bear --mode subject --instance-prompt 'a photo of sks toy bear' \\\n"
        "      --base nitrosocke/mo-di-diffusion --steps 800   # images from the bucket's training/my-bear/\n"
        "A 512 px run wants a CUDA GPU (docs/finetune.md); the CPU works for tiny models and smoke tests.")
    p.add_argument("--name", required=True, help="the LoRA's name: its output folder and default training prefix")
    p.add_argument("--images", metavar="DIR_OR_PREFIX",
                   help="a local folder of images, or a bucket prefix (default: training/NAME/ in the bucket)")
    p.add_argument("--base", required=True, metavar="MODEL", help="the SD 1.x/2.x model to adapt: hub id or local "
                   "diffusers folder; use the model of the style that will use the LoRA")
    p.add_argument("--revision", help="hub commit / tag of --base to pin (recorded)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.style.value,
                   help="style: a look from captioned images; subject: one toy under --instance-prompt (default style)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--rank", type=int, default=DEFAULT_RANK, help=f"LoRA rank (default {DEFAULT_RANK})")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate (default {DEFAULT_LR})")
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    p.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION,
                   help=f"pixels: images are resized and centre-cropped to this square, multiple of 8 (default "
                   f"{DEFAULT_RESOLUTION}; 768 for SD 2.x-v)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--captions", choices=[c.value for c in CaptionSource], default=CaptionSource.files.value,
                   help="files: <image>.txt beside each image; auto: the captioner; none: --prompt (default files)")
    p.add_argument("--prompt", help="the caption of every image with --captions none")
    p.add_argument("--instance-prompt", help="subject mode: the words that name your toy, e.g. 'a photo of sks toy'")
    p.add_argument("--class-prompt", help="subject mode, prior preservation: the class, e.g. 'a photo of a toy'")
    p.add_argument("--prior-images", type=int, default=0,
                   help="subject mode: class images the base model draws for prior preservation (default 0: off)")
    p.add_argument("--prior-weight", type=float, default=1.0, help="weight of the prior-preservation loss (default 1)")
    p.add_argument("--snr-gamma", type=float, help="Min-SNR loss weighting with this gamma (5 is usual; default off)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips (asymmetric subjects, text)")
    p.add_argument("--mixed-precision", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="frozen weights and forward pass; auto: bfloat16 (or float16) on CUDA, float32 on the CPU")
    p.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                   help="trade UNet compute for memory; auto: on for CUDA")
    p.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"steps between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--keep-checkpoints", type=int, default=2,
                   help="checkpoints kept (older ones are deleted; default 2)")
    p.add_argument("--validation-images", type=int, default=2,
                   help="training photos rendered at each checkpoint (default 2; 0: no validation)")
    p.add_argument("--validation-steps", type=int, default=20,
                   help="scheduler steps of each validation render and class image (default 20)")
    p.add_argument("--min-images", type=int, default=DEFAULT_MIN_IMAGES,
                   help=f"usable images needed (default {DEFAULT_MIN_IMAGES})")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the bucket's models/loras/NAME/)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="require a checkpoint to continue from (a rerun continues from one anyway)")
    group.add_argument("--fresh", action="store_true",
                       help="discard this run's checkpoints and results in the output location and start over")
    p.set_defaults(func=cmd_finetune)
    return p


def _paragraphs(text: str) -> str:
    """Wrap each paragraph for the terminal (the raw formatter keeps the epilog's example lines)."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, 100) for p in text.split("\n\n"))


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from processor.finetune import checkpoint as ckpt
    from processor.finetune.data import check_caption_options, load_dataset
    from processor.models.loader import ModelLoader
    from processor.queue.keys import safe_segment

    if not args.name or safe_segment(args.name) != args.name or "/" in args.name:
        raise ConfigError(f"--name {args.name!r}: use letters, digits, '-', '_' and '.' (it names a folder and a "
                          f"style), e.g. --name {safe_segment(args.name or 'my-style')}")
    _check_numbers(args)
    mode, captions = Mode(args.mode), CaptionSource(args.captions)
    check_caption_options(mode, captions, args.prompt, args.instance_prompt, object())
    models = ModelLoader(settings.models)
    device = models.device()
    hp = Hyperparameters(
        mode=mode, steps=args.steps, rank=args.rank, alpha=args.alpha or float(args.rank), lr=args.lr, batch=args.batch,
        resolution=args.resolution, seed=args.seed, captions=captions, prompt=args.prompt,
        instance_prompt=args.instance_prompt, class_prompt=args.class_prompt,
        prior_images=args.prior_images if mode is Mode.subject else 0, prior_weight=args.prior_weight,
        snr_gamma=args.snr_gamma, target_modules=list(_target_modules()), lr_warmup_steps=args.lr_warmup_steps,
        random_flip=not args.no_flip, mixed_precision=_precision(args.mixed_precision, device),
        gradient_checkpointing=args.gradient_checkpointing == "on"
        or (args.gradient_checkpointing == "auto" and device.startswith("cuda")),
    )

    store = None
    if args.out:
        from processor.store.local import LocalStore

        out = Location.of(LocalStore(Path(args.out)), "")
    else:
        store = build_store(settings)
        out = Location.of(store, LORAS_PREFIX + args.name)
    if args.fresh:
        _discard(out)

    finished = out.get_or_none(RECORD_NAME)
    if finished is not None:
        done = TrainingRecord.model_validate_json(finished)
        _same_run(done, hp, args.base, out, finished=True)
        print(f"{args.name}: already trained ({done.steps_done} steps) in {out.description}; --fresh retrains it",
              file=sys.stderr)
        print(style_snippet(args.name, args.base, args.revision, done, _lora_path(out, args.out)))
        return 0
    steps = ckpt.checkpoint_steps(out)
    if args.resume and not steps:
        raise ConfigError(f"--resume: no checkpoint in {out.description} to continue from; run without --resume")
    state = ckpt.load_checkpoint(out, steps[-1]) if steps else None
    if state is not None:
        _same_run(state.record, hp, args.base, out, finished=False)
        if state.step >= hp.steps:
            raise ConfigError(f"the last checkpoint is at step {state.step}, not below --steps {hp.steps}: "
                              "raise --steps")

    images = _images_location(args, settings, store)
    captioner = _captioner(settings) if captions is CaptionSource.auto and mode is Mode.style else None
    dataset = load_dataset(images, mode=mode, captions=captions, limits=settings.pipeline.decode, prompt=args.prompt,
                           instance_prompt=args.instance_prompt, captioner=captioner, min_images=args.min_images)
    if state is not None:
        was = [(d.key, d.sha256) for d in state.record.dataset]
        now = [(i.key, i.sha256) for i in dataset.images]
        if was != now:
            raise ConfigError(f"the training images changed since the checkpoint at step {state.step} in "
                              f"{out.description}; restore them, or start over with --fresh")
    log.info("finetune_start", extra={"lora": args.name, "base": args.base, "images": len(dataset.images),
                                      "skipped": len(dataset.skipped), "out": out.description, "device": device,
                                      "resume_step": state.step if state else None, **hp.model_dump(mode="json")})

    from processor.finetune.train import RunOptions, Trainer

    options = RunOptions(checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                         validation_images=args.validation_images, validation_steps=args.validation_steps,
                         progress_bar=not args.quiet and sys.stderr.isatty())
    trainer = Trainer(args.name, args.base, args.revision, hp, dataset, out, options, models)
    trainer.setup()
    result = trainer.run(resume_from=state)
    record = result.record
    print(f"trained {args.name}: {record.steps_done} steps on {len(record.dataset)} images, final loss "
          f"{record.loss[-1]:.4f}, {record.train_seconds:.0f} s on {record.device}"
          + (f" (resumed from step {result.started_at_step})" if result.started_at_step else ""), file=sys.stderr)
    print(f"LoRA: {result.lora_key}\nrecord: {result.record_key}\n(in {out.store.description})", file=sys.stderr)
    print(style_snippet(args.name, args.base, args.revision, record, _lora_path(out, args.out)))
    return 0


def style_snippet(name: str, base: str, revision: str | None, record: TrainingRecord, lora_path: str) -> str:
    """A config.yaml ``styles:`` entry that renders with the LoRA (img2img on the same base)."""
    hp = record.hyperparameters
    lines = ["# Add to config.yaml (and to run.styles) to render with this LoRA:", "styles:", f"  {name}:",
             "    engine: img2img", f"    model: {_yaml(base)}"]
    if revision or record.base.revision:
        lines.append(f"    revision: {_yaml(revision or record.base.revision)}")
    if hp.mode is Mode.subject:
        lines.append(f"    prompt: {_yaml(hp.instance_prompt)}")
    elif hp.captions is CaptionSource.none:
        lines.append(f"    trigger: {_yaml(hp.prompt)}")
    lines += [f"    size: {hp.resolution}", "    lora:", f"      path: {_yaml(lora_path)}", "      scale: 1.0"]
    return "\n".join(lines)


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _lora_path(out: Location, out_dir: str | None) -> str:
    from processor.models.loader import BUCKET_SCHEME

    if out_dir:
        return str(Path(out_dir).absolute())
    return BUCKET_SCHEME + out.prefix


def _target_modules() -> list[str]:
    from processor.finetune.train import TARGET_MODULES

    return TARGET_MODULES


def _precision(wanted: str, device: str) -> str:
    if wanted != "auto":
        return wanted
    if not device.startswith("cuda"):
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _check_numbers(args: argparse.Namespace) -> None:
    checks = [("--steps", args.steps, 1), ("--rank", args.rank, 1), ("--batch", args.batch, 1),
              ("--checkpoint-every", args.checkpoint_every, 1), ("--min-images", args.min_images, 1),
              ("--keep-checkpoints", args.keep_checkpoints, 1), ("--validation-images", args.validation_images, 0),
              ("--validation-steps", args.validation_steps, 0), ("--prior-images", args.prior_images, 0),
              ("--lr-warmup-steps", args.lr_warmup_steps, 0), ("--seed", args.seed, 0)]
    for flag, value, low in checks:
        if value < low:
            raise ConfigError(f"{flag} {value}: must be at least {low}")
    if args.lr <= 0:
        raise ConfigError(f"--lr {args.lr}: must be positive (1e-4 is usual for a LoRA)")
    if args.resolution < 64 or args.resolution % 8:
        raise ConfigError(f"--resolution {args.resolution}: a multiple of 8, at least 64 (the VAE downsamples 8x)")
    if args.prior_images and not args.class_prompt:
        raise ConfigError("--prior-images needs --class-prompt, the class your toy belongs to, e.g. 'a photo of a toy'")


def _same_run(record: TrainingRecord, hp: Hyperparameters, base: str, out: Location, *, finished: bool) -> None:
    """A rerun continues (or reports) a run only with the base model and settings it was trained with."""
    was = record.hyperparameters.model_dump(mode="json", exclude=MAY_CHANGE_ON_RESUME) | {"base": record.base.model}
    now = hp.model_dump(mode="json", exclude=MAY_CHANGE_ON_RESUME) | {"base": base}
    if finished:
        was["steps"], now["steps"] = record.hyperparameters.steps, hp.steps
    changed = sorted(k for k in was if was[k] != now.get(k))
    if changed:
        what = "a finished LoRA" if finished else f"a checkpoint at step {record.steps_done}"
        detail = ", ".join(f"{k} {was[k]!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"{out.description} holds {what} trained with other settings ({detail}); rerun with the "
                          "same settings to continue, --fresh to discard it, or another --name / --out")


def _discard(out: Location) -> None:
    removed = 0
    for folder in RUN_FOLDERS:
        for name, _ in list(out.names(folder)):
            out.delete(name)
            removed += 1
    for name in RUN_FILES:
        if out.get_or_none(name) is not None:
            out.delete(name)
            removed += 1
    log.info("finetune_fresh", extra={"out": out.description, "removed": removed})


def _images_location(args: argparse.Namespace, settings: Settings, store: Any) -> Location:
    if args.images and Path(args.images).is_dir():
        from processor.finetune.location import ReadOnlyFolder

        return Location.of(ReadOnlyFolder(Path(args.images)), "")
    if args.images and (args.images.startswith((".", "/", "~")) or Path(args.images).exists()):
        raise ConfigError(f"--images {args.images}: no such folder (a bucket prefix has no leading '/', '.' or '~')")
    if store is None:
        store = build_store(settings)
    return Location.of(store, args.images or TRAINING_PREFIX + args.name)


def _captioner(settings: Settings) -> Any:
    """``--captions auto``: the product's captioner; ``blip`` (the caption model alone) when the
    config turns captions off for rendering."""
    if settings.caption.mode == "none":
        settings = settings.model_copy(update={"caption": settings.caption.model_copy(update={"mode": "blip"})})
    captioner = build_captioner(settings)
    captioner.setup()

    def caption(image: Any) -> str:
        result = captioner(image)
        return result.text or result.raw or ""

    return caption

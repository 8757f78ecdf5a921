"""The LoRA recipe: diffusers' text-to-image / DreamBooth LoRA training, as one product module.

A peft ``LoraConfig`` wraps the UNet's attention projections; everything else (VAE, text encoder,
UNet base weights) is frozen. Each step encodes a batch to latents, adds noise at random
timesteps and regresses the UNet's output on the noise (or on the velocity when the model's
scheduler predicts ``v_prediction``), optionally Min-SNR weighted. On CUDA the frozen weights and
the forward pass run in bf16/fp16 with gradient checkpointing; the LoRA weights and the optimizer
stay in float32. On the CPU everything is float32.

Every random draw (noise, timesteps, flips, the VAE sample) comes from one ``torch.Generator``
seeded by ``--seed`` whose state each checkpoint saves, and the image order of epoch e is a
permutation seeded by (seed, e). So on one machine a resumed run computes the same steps as an
uninterrupted one.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processor.errors import ConfigError
from processor.finetune import checkpoint as ckpt
from processor.finetune.data import Dataset
from processor.finetune.location import Location
from processor.finetune.record import (
    LORA_NAME,
    RECORD_NAME,
    BaseModelInfo,
    DatasetImage,
    Hyperparameters,
    Mode,
    TrainingRecord,
    Versions,
)
from processor.manifest import utcnow
from processor.models.families import FamilyId, read_model_index

log = logging.getLogger("processor.finetune")

#: The UNet modules the LoRA wraps: the attention projections (diffusers' LoRA examples).
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
#: Img2img strength of the validation renders: enough to show the style, keeping the photo's shape.
VALIDATION_STRENGTH = 0.6
#: CFG scale of the validation renders and of prior-preservation class images.
VALIDATION_GUIDANCE = 7.5
#: AdamW settings of diffusers' examples.
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPS = 1e-8
#: Timesteps of the fixed validation loss: spread over the schedule, the same at every checkpoint.
VALIDATION_TIMESTEPS = 8
#: Prior-preservation class images live here in the output location (generated once, reused on resume).
CLASS_IMAGES = "class_images/"


@dataclass(frozen=True)
class RunOptions:
    """How a run proceeds; none of it changes what is trained."""

    checkpoint_every: int
    keep_checkpoints: int = 2
    #: Training photos rendered at each checkpoint.
    validation_images: int = 2
    #: Scheduler steps of a validation render / class image (0: no validation).
    validation_steps: int = 20
    #: Steps between progress log events when there is no terminal.
    log_every: int = 10
    #: A tqdm progress bar (a terminal); else log events.
    progress_bar: bool = False
    #: Called after every step with (steps done, loss): the benchmark's clock.
    on_step: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    record: TrainingRecord
    #: Key of the LoRA in the output location.
    lora_key: str
    record_key: str
    #: The step this run started at (0, or the checkpoint it resumed from).
    started_at_step: int


def library_versions() -> Versions:
    import diffusers
    import peft
    import torch
    import transformers

    from processor import __version__

    return Versions(processor=__version__, torch=torch.__version__, diffusers=diffusers.__version__,
                    peft=peft.__version__, transformers=transformers.__version__)


class Trainer:
    """One training run. ``setup()`` loads the base model; ``run()`` trains, checkpoints and
    writes the LoRA and the record to ``out``."""

    def __init__(self, name: str, base: str, revision: str | None, hp: Hyperparameters, dataset: Dataset,
                 out: Location, options: RunOptions, models: Any,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.name, self.base, self.revision = name, base, revision
        self.hp, self.dataset, self.out, self.options = hp, dataset, out, options
        self.models = models
        self.clock = clock
        self.device = "cpu"
        self.parts: dict[str, Any] = {}
        self.resolved: Any = None
        #: Prior-preservation class images (subject mode), loaded by ``run``.
        self._class_pils: list[Any] = []

    # ----------------------------------------------------------------- setup

    def setup(self) -> None:
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        self.resolved = self.models.resolve(self.base, self.revision)
        path = self.resolved.path
        found = self.models.family(self.base, self.revision)  # processor.models.families
        if found.family.series == "sdxl":
            raise ConfigError(f"--base {self.base}: SDXL training is not supported yet; use an SD 1.x/2.x model")
        if found.family.unet_channels not in (None, 4):
            raise ConfigError(f"--base {self.base}: its UNet takes {found.family.unet_channels} channels "
                              "(an inpainting or instruct-pix2pix model); train on a text-to-image model")
        if found.family.id is not FamilyId.SD:
            raise ConfigError(f"--base {self.base}: a {found.family.label} model ({found.class_name}); LoRA "
                              f"training runs on SD 1.x/2.x models")
        self.device = self.models.device()
        precision = self.hp.mixed_precision
        if self.device == "cpu" and precision != "float32":
            raise ConfigError(f"--mixed-precision {precision} needs a CUDA device; the CPU trains in float32")
        weight_dtype = getattr(torch, precision)
        self.parts = {
            "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", use_safetensors=True),
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", use_safetensors=True),
            "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True),
            "noise": DDPMScheduler.from_pretrained(path, subfolder="scheduler"),
        }
        unet = self.parts["unet"]
        for module in (self.parts["text_encoder"], self.parts["vae"], unet):
            module.requires_grad_(False)
            module.to(self.device)
            if weight_dtype != torch.float32:
                module.to(dtype=weight_dtype)
        self.parts["text_encoder"].eval()
        self.parts["vae"].eval()
        # peft draws the LoRA A matrices from the global generator: seed it, or two runs differ.
        torch.manual_seed(self.hp.seed)
        # peft annotates lora_alpha as int, but it only scales by lora_alpha / r: a float is fine.
        unet.add_adapter(LoraConfig(r=self.hp.rank, lora_alpha=self.hp.alpha,  # type: ignore[arg-type]
                                    init_lora_weights="gaussian", target_modules=self.hp.target_modules))
        # The LoRA weights train in float32 even when the frozen ones are half precision.
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        if self.hp.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.weight_dtype = weight_dtype
        self.prediction_type = self.parts["noise"].config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"--base {self.base}: scheduler prediction_type {self.prediction_type!r} is not "
                              "supported (epsilon or v_prediction)")

    # ----------------------------------------------------------------- the run

    def run(self, resume_from: ckpt.TrainingState | None = None) -> TrainResult:
        import torch

        hp, unet = self.hp, self.parts["unet"]
        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPS)
        scaler = torch.amp.GradScaler("cuda") if hp.mixed_precision == "float16" else None
        generator = torch.Generator().manual_seed(hp.seed)
        record = self._new_record()
        start = 0
        if resume_from is not None:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(unet, {k: v.to(self.device) for k, v in resume_from.adapter.items()})
            optimizer.load_state_dict(resume_from.optimizer)
            generator.set_state(resume_from.generator)
            if scaler is not None and resume_from.scaler:
                scaler.load_state_dict(resume_from.scaler)
            # A resume may raise --steps; the command checked that nothing else changed.
            record = resume_from.record.model_copy(update={"hyperparameters": resume_from.record.hyperparameters
                                                           .model_copy(update={"steps": hp.steps})})
            start = resume_from.step
            record.resumed_from.append(start)
            log.info("finetune_resume", extra={"step": start, "steps": hp.steps})
        if hp.mode is Mode.subject and hp.prior_images:
            record.class_images = self._class_images()
        pixels = [self._pixels(item.image) for item in self.dataset.images]
        class_pixels = [self._pixels(image) for image in self._class_pils]
        captions = {i.caption for i in self.dataset.images}
        embeds = self._embed(captions | ({self._class_prompt()} if class_pixels else set()))

        if start == 0:
            record.validation_loss[0] = self.validation_loss(pixels)
        unet.train()
        bar = self._bar(start)
        run_started = self.clock()
        last_checkpoint_time = run_started
        try:
            for step in range(start, hp.steps):
                lr = hp.lr * min(1.0, (step + 1) / hp.lr_warmup_steps) if hp.lr_warmup_steps else hp.lr
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = self._step(step, pixels, class_pixels, embeds, generator, optimizer, scaler, params)
                if not math.isfinite(loss):
                    raise ConfigError(f"the loss is {loss} at step {step + 1}: training diverged; lower --lr "
                                      f"(now {hp.lr}) or use --mixed-precision bfloat16/float32")
                record.loss.append(round(loss, 6))
                record.steps_done = step + 1
                done = step + 1
                if self.options.on_step is not None:
                    self.options.on_step(done, loss)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                elif done % self.options.log_every == 0 or done == hp.steps:
                    elapsed = self.clock() - run_started
                    rate = elapsed / (done - start)
                    log.info("finetune_step", extra={"step": done, "steps": hp.steps, "loss": round(loss, 6),
                                                     "lr": lr, "eta_s": round(rate * (hp.steps - done), 1)})
                if done % self.options.checkpoint_every == 0 and done < hp.steps:
                    now = self.clock()
                    record.train_seconds = round(record.train_seconds + now - last_checkpoint_time, 3)
                    last_checkpoint_time = now
                    record.validation_loss[done] = self.validation_loss(pixels)
                    self._checkpoint(done, record, optimizer, generator, scaler)
        finally:
            if bar is not None:
                bar.close()
        record.train_seconds = round(record.train_seconds + self.clock() - last_checkpoint_time, 3)
        record.validation_loss[hp.steps] = self.validation_loss(pixels)
        return self._finish(record, start)

    def _step(self, step: int, pixels: list[Any], class_pixels: list[Any], embeds: dict[str, Any], generator: Any,
              optimizer: Any, scaler: Any, params: list[Any]) -> float:
        import torch
        from torch.nn.functional import mse_loss

        hp, unet, noise_scheduler = self.hp, self.parts["unet"], self.parts["noise"]
        indices = [self._image_index(step * hp.batch + j, len(pixels)) for j in range(hp.batch)]
        images = [pixels[i] for i in indices]
        captions = [self.dataset.images[i].caption for i in indices]
        prior = bool(class_pixels)
        if prior:
            images += [class_pixels[self._image_index(step * hp.batch + j, len(class_pixels), salt=1)]
                       for j in range(hp.batch)]
            captions += [self._class_prompt()] * hp.batch
        batch = torch.stack(images)
        if hp.random_flip:
            flip = torch.rand(len(images), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        batch = batch.to(self.device, dtype=self.weight_dtype)
        with torch.no_grad():
            dist = self.parts["vae"].encode(batch).latent_dist
            eps = torch.randn(dist.mean.shape, generator=generator).to(self.device, dtype=self.weight_dtype)
            latents = (dist.mean + dist.std * eps) * self.parts["vae"].config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(self.device, dtype=latents.dtype)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(self.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        hidden = torch.stack([embeds[c] for c in captions])
        with self._autocast():
            prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        per_sample = mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if hp.snr_gamma is not None:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(noise_scheduler, timesteps)
            weight = torch.clamp(snr, max=hp.snr_gamma) / (snr + 1 if self.prediction_type == "v_prediction" else snr)
            per_sample = per_sample * weight
        if prior:
            loss = per_sample[:hp.batch].mean() + hp.prior_weight * per_sample[hp.batch:].mean()
        else:
            loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
        return float(loss.detach())

    def validation_loss(self, pixels: list[Any]) -> float:
        """The loss on fixed draws: the validation photos' latent means, noised at
        ``VALIDATION_TIMESTEPS`` timesteps spread over the schedule with noise seeded by ``seed``.
        Unlike the per-step loss (one random timestep each), it is comparable across checkpoints:
        it falls as the LoRA fits the training images."""
        import torch
        from torch.nn.functional import mse_loss

        count = max(1, min(self.options.validation_images, len(pixels)))
        unet, noise_scheduler = self.parts["unet"], self.parts["noise"]
        total = noise_scheduler.config.num_train_timesteps
        timesteps = torch.linspace(0, total - 1, VALIDATION_TIMESTEPS + 2)[1:-1].round().long().to(self.device)
        generator = torch.Generator().manual_seed(self.hp.seed + 20_000)
        unet.eval()
        losses = []
        try:
            with torch.no_grad(), self._autocast():
                batch = torch.stack(pixels[:count]).to(self.device, dtype=self.weight_dtype)
                latents = self.parts["vae"].encode(batch).latent_dist.mean * self.parts["vae"].config.scaling_factor
                embeds = self._embed({i.caption for i in self.dataset.images[:count]})
                hidden = torch.stack([embeds[i.caption] for i in self.dataset.images[:count]])
                for t in timesteps:
                    noise = torch.randn(latents.shape, generator=generator).to(self.device, dtype=latents.dtype)
                    steps = t.repeat(count)
                    noisy = noise_scheduler.add_noise(latents, noise, steps)
                    target = noise if self.prediction_type == "epsilon" else noise_scheduler.get_velocity(
                        latents, noise, steps)
                    prediction = unet(noisy, steps, hidden, return_dict=False)[0]
                    losses.append(mse_loss(prediction.float(), target.float()).item())
        finally:
            unet.train()
        return round(sum(losses) / len(losses), 6)

    def _image_index(self, position: int, count: int, salt: int = 0) -> int:
        """The image at ``position`` of the stream: epoch ``position // count`` is a permutation
        seeded by (seed, epoch), so the order needs no state to resume."""
        import torch

        epoch, offset = divmod(position, count)
        seed = self.hp.seed * 1_000_003 + epoch * 2 + salt
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        return int(order[offset])

    # ----------------------------------------------------------------- pieces

    def _new_record(self) -> TrainingRecord:
        return TrainingRecord(
            name=self.name,
            base=BaseModelInfo(model=self.base, revision=self.resolved.revision,
                               pipeline=read_model_index(self.resolved.path).get("_class_name")),
            hyperparameters=self.hp.model_copy(update={"prediction_type": self.prediction_type}),
            images=self.dataset.source, dataset=self.dataset.records(), skipped=self.dataset.skipped,
            device=self._device_name(), seed=self.hp.seed, versions=library_versions(),
        )

    def _device_name(self) -> str:
        import torch

        if self.device.startswith("cuda"):
            return f"{self.device} ({torch.cuda.get_device_name(torch.device(self.device))})"
        return self.device

    def _pixels(self, image: Any) -> Any:
        """Resize the short side to ``resolution``, centre-crop a square, scale to [-1, 1] (CHW)."""
        import numpy as np
        import torch

        crop = _square(image.convert("RGB"), self.hp.resolution)
        array = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def _embed(self, captions: set[str]) -> dict[str, Any]:
        """Text-encoder states per distinct caption, computed once (the text encoder is frozen)."""
        import torch

        tokenizer, encoder = self.parts["tokenizer"], self.parts["text_encoder"]
        out = {}
        with torch.no_grad():
            for caption in sorted(captions):
                ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                return_tensors="pt").input_ids.to(self.device)
                out[caption] = encoder(ids)[0][0]
        return out

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.weight_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.weight_dtype)

    def _bar(self, start: int) -> Any:
        if not self.options.progress_bar:
            return None
        from tqdm import tqdm

        return tqdm(total=self.hp.steps, initial=start, desc=f"finetune {self.name}", unit="step", file=sys.stderr,
                    dynamic_ncols=True)

    def _pipeline(self, kind: str) -> Any:
        """An inference pipeline over the training modules (the LoRA active), with the model's own
        scheduler, as a style would render."""
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        if "inference" not in self.parts:
            self.parts["inference"] = _scheduler_class(self.resolved.path).from_pretrained(
                self.resolved.path, subfolder="scheduler")
        cls = StableDiffusionImg2ImgPipeline if kind == "img2img" else StableDiffusionPipeline
        pipe = cls(vae=self.parts["vae"], text_encoder=self.parts["text_encoder"], tokenizer=self.parts["tokenizer"],
                   unet=self.parts["unet"], scheduler=self.parts["inference"], safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False)
        # The run has its own progress bar / events. (DiffusionPipeline defines the method; mypy
        # reads diffusers' top-level names as its torch-less placeholder classes, which lack it.)
        pipe.set_progress_bar_config(disable=True)  # type: ignore[union-attr]
        return pipe

    def validation_sheet(self, step: int) -> bytes | None:
        """Render the first ``validation_images`` training photos with the LoRA as it is now (img2img,
        fixed seed) and lay them out beside the originals: the style emerging across checkpoints."""
        import torch

        from processor.pipeline.encode import contact_sheet

        count = min(self.options.validation_images, len(self.dataset.images))
        if count == 0 or self.options.validation_steps == 0:
            return None
        unet = self.parts["unet"]
        unet.eval()
        pipe = self._pipeline("img2img")
        tiles, labels = [], []
        try:
            with self._autocast():
                for i, item in enumerate(self.dataset.images[:count]):
                    photo = _square(item.image, self.hp.resolution)
                    out = pipe(prompt=item.caption, image=photo, strength=VALIDATION_STRENGTH,
                               num_inference_steps=self.options.validation_steps, guidance_scale=VALIDATION_GUIDANCE,
                               generator=torch.Generator().manual_seed(self.hp.seed + i)).images[0]
                    tiles += [photo, out]
                    labels += [f"photo {i + 1}", f"step {step}"]
        finally:
            unet.train()
        return contact_sheet(tiles[0], tiles[1:], height=min(256, self.hp.resolution), labels=labels)

    def _class_prompt(self) -> str:
        """The prompt prior preservation trains the class images under (the CLI requires one)."""
        if self.hp.class_prompt is None:
            raise ConfigError("--prior-images needs --class-prompt, the class your toy belongs to, "
                              "e.g. 'a photo of a toy'")
        return self.hp.class_prompt

    def _class_images(self) -> list[DatasetImage]:
        """Prior preservation: ``prior_images`` images of ``class_prompt`` drawn by the base model
        before training (the LoRA is still zero-effect: B starts at zero), kept in the output
        location so a resumed run reuses them."""
        import hashlib

        import torch

        from processor.config import DecodeSettings
        from processor.pipeline.decode import decode_image

        records, pils = [], []
        pipe = None
        for i in range(self.hp.prior_images):
            name = f"{CLASS_IMAGES}{i:04d}.png"
            data = self.out.get_or_none(name)
            if data is None:
                if pipe is None:
                    pipe = self._pipeline("text2img")
                    self.parts["unet"].eval()
                with self._autocast():
                    image = pipe(prompt=self.hp.class_prompt, height=self.hp.resolution, width=self.hp.resolution,
                                 num_inference_steps=max(1, self.options.validation_steps),
                                 guidance_scale=VALIDATION_GUIDANCE,
                                 generator=torch.Generator().manual_seed(self.hp.seed + 10_000 + i)).images[0]
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                data = buffer.getvalue()
                self.out.put(name, data, content_type="image/png")
            image = decode_image(data, DecodeSettings(min_side=1), name=name).image
            pils.append(image)
            records.append(DatasetImage(key=self.out.key(name), sha256=hashlib.sha256(data).hexdigest(),
                                        width=image.width, height=image.height, caption=self.hp.class_prompt or ""))
        self.parts["unet"].train()
        self._class_pils = pils
        return records

    def lora_bytes(self) -> bytes:
        """The LoRA as ``pytorch_lora_weights.safetensors``, in diffusers' format (``unet.`` keys)."""
        import tempfile
        from pathlib import Path

        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.parts["unet"]
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        with tempfile.TemporaryDirectory() as folder:
            StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True,
                                                      unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
            return (Path(folder) / LORA_NAME).read_bytes()

    def _checkpoint(self, step: int, record: TrainingRecord, optimizer: Any, generator: Any, scaler: Any) -> None:
        from peft.utils import get_peft_model_state_dict

        started = self.clock()
        sheet = self.validation_sheet(step)
        record.checkpoints.append(step)
        key = ckpt.save_checkpoint(self.out, step=step, lora_file=self.lora_bytes(),
                                   adapter=get_peft_model_state_dict(self.parts["unet"]),
                                   optimizer=optimizer.state_dict(), generator=generator.get_state(), record=record,
                                   scaler=scaler.state_dict() if scaler is not None else None, validation=sheet)
        removed = ckpt.prune(self.out, self.options.keep_checkpoints)
        log.info("finetune_checkpoint", extra={"step": step, "checkpoint": key, "pruned": removed,
                                               "loss": record.loss[-1], "seconds": round(self.clock() - started, 3)})

    def _finish(self, record: TrainingRecord, start: int) -> TrainResult:
        sheet = self.validation_sheet(record.steps_done)
        if sheet is not None:
            self.out.put("validation.jpg", sheet, content_type="image/jpeg")
        lora_key = self.out.put(LORA_NAME, self.lora_bytes())
        record.finished_at = utcnow()
        record.lora = lora_key
        # The record goes last: its presence says the LoRA beside it is complete.
        record_key = self.out.put(RECORD_NAME, record.to_json_bytes(), content_type="application/json")
        log.info("finetune_done", extra={"lora": lora_key, "record": record_key, "steps": record.steps_done,
                                         "loss": record.loss[-1] if record.loss else None,
                                         "train_seconds": record.train_seconds})
        return TrainResult(record=record, lora_key=lora_key, record_key=record_key, started_at_step=start)


def _scheduler_class(path: Any) -> Any:
    """The scheduler class the model ships (its validation renders use it, like inference)."""
    import diffusers

    name = read_model_index(path).get("scheduler", [None, "PNDMScheduler"])[1]
    return getattr(diffusers, name, diffusers.PNDMScheduler)


def _square(image: Any, size: int) -> Any:
    from PIL import Image

    scale = size / min(image.width, image.height)
    resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))

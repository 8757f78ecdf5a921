"""What every diffusion engine (``img2img``, ``txt2img``, ``edit``) does around its pipeline calls,
as plain functions and two small parts it composes: the style's options checked against its
family (``refuse_unsupported``), its LoRAs (``StyleLoras``), batching that halves on CUDA
out-of-memory (``Batches``), VAE tiling, the compile warm-up, and the model side of every
variant's record (``model_record``) and of ``describe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from processor.config import DiffusionStyle, LcmSettings, LoraSettings, ModelRef, StyleOption
from processor.errors import ConfigError
from processor.models import accel
from processor.models.families import Denoiser, Family, FamilyMatch, SchedulerChoice, families_with, family
from processor.models.loader import ModelLoader, ResolvedModel
from processor.pipeline.provenance import AdapterRecord, LoraRecord, ModelRecord
from processor.pipeline.sampling import run_in_batches

if TYPE_CHECKING:
    import torch


def refuse_unsupported(style_name: str, style: DiffusionStyle, found: FamilyMatch) -> Family:
    """The family row the style runs on (the turbo row for ``turbo: true``), after refusing at
    start every option the family does not run (``ConfigError`` naming the style and the key),
    rather than accepting it and running without."""
    base = found.family
    for option in style.addons().options():
        if option not in base.options:
            runs = " or ".join(dict.fromkeys(f.label for f in families_with(option)))
            needs = "needs an SDXL base model" if option is StyleOption.REFINER else f"runs on {runs} models only"
            raise ConfigError(
                f"styles.{style_name}.{option.value}: model {style.model!r} is {base.label} (a "
                f"{base.denoiser.value}); {option.value} {needs}: drop {option.value} or pick such a model")
    if style.addons().turbo and base.turbo_row is not None:
        return family(base.turbo_row)
    return base


def scheduler_name(style_scheduler: str | None, pipe: Any, row: Family) -> str | None:
    """What a variant records as its scheduler: the style's name, or the model's own class."""
    if row.scheduler is SchedulerChoice.MODEL:
        return type(pipe.scheduler).__name__ if pipe is not None else None
    return style_scheduler


class StyleLoras:
    """A style's LoRA and LCM-LoRA on the shared model: loaded once, switched on for this style's
    calls (the UNet or transformer is shared with other styles) and recorded per variant."""

    def __init__(self, style_name: str, models: ModelLoader, model: ModelRef, lora: LoraSettings | None = None,
                 lcm: LcmSettings | None = None) -> None:
        self.style_name = style_name
        self.models = models
        self.model = model
        self.lora = lora
        self.lcm = lcm
        #: Adapter names in the shared modules (the LoRA's, the LCM-LoRA's).
        self.names: list[str] = []
        self.scales: list[float] = []
        #: The LCM-LoRA's adapter name (also in ``names``), once loaded.
        self.lcm_name: str | None = None
        #: name -> A1111's short hash of each LoRA file (``Lora hashes``).
        self.hashes: dict[str, str] = {}

    def load(self, pipe: Any) -> None:
        wanted = [lora for lora in (self.lora, self.lcm.as_lora() if self.lcm is not None else None) if lora]
        for lora in wanted:
            self.names.append(self.models.lora_adapter(pipe, self.model.model, self.model.revision, lora))
            self.scales.append(lora.scale)
        if self.lcm is not None:
            self.lcm_name = self.names[-1]
        self.hashes = dict(self.models.lora_hash(lora) for lora in wanted)

    def activate(self, pipe: Any) -> None:
        """The shared modules: this style's adapters on at their scales, or every adapter off."""
        if self.names:
            pipe.enable_lora()
            pipe.set_adapters(self.names, adapter_weights=self.scales)
        elif self.models.has_adapters(self.model.model, self.model.revision):
            pipe.disable_lora()

    def record(self) -> LoraRecord:
        lora = lcm = None
        if self.lora is not None:
            lora = AdapterRecord(self.lora.path, self.lora.scale, self.models.lora_revision(self.lora))
        if self.lcm is not None:
            lcm = AdapterRecord(self.lcm.lora, self.lcm.scale, self.models.lora_revision(self.lcm.as_lora()))
        return LoraRecord(lora, lcm, dict(self.hashes))


class Batches:
    """Rows per pipeline call. Until a CUDA out-of-memory, a call takes every row it is given (a
    style's variants; several inputs' variants when they render together), at least ``limit``;
    ``run`` halves the chunk on out-of-memory and keeps that smaller batch for later calls."""

    def __init__(self, style_name: str, limit: int) -> None:
        self.style_name = style_name
        self.limit = limit
        #: Whether an out-of-memory has taught ``limit`` (it is then a ceiling, not a floor).
        self.halved = False

    def rows(self, count: int) -> int:
        """The rows one call takes out of ``count``."""
        return min(count, self.limit) if self.halved else max(count, self.limit)

    def run(self, count: int, call: Callable[[int, int], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """``call(start, stop)`` over [0, count); the outputs and the halvings it took."""
        out, limit, halvings = run_in_batches(
            count, call, self.rows(count), style_name=self.style_name, stage="transform",
            too_small=f"CUDA out of memory with a single variant; lower styles.{self.style_name}.size "
                      "or use a GPU with more memory",
        )
        if halvings:
            self.limit, self.halved = limit, True
        return out, halvings


@dataclass
class LoadedModel:
    """A style's pipeline object and what it is: the engines' shared state after ``setup``."""

    pipe: Any
    resolved: ResolvedModel
    #: The family row the style runs on (a turbo row for a turbo style).
    family: Family
    class_name: str
    #: The performance switches active on the shared modules (``processor.models.accel``).
    switches: dict[str, Any]


def warm_up(engine: Callable[[Image.Image], Any], loaded: LoadedModel, side: int, style_name: str) -> float | None:
    """A compiled UNet compiles on its first call: run it now, on one blank image of ``side`` (the
    shapes of a square input), rather than on the first user's input. Once per shared UNet: the
    per-image engines (sidecar overrides) share the record. Seconds it took, or None."""
    switches = loaded.switches
    if loaded.family.denoiser is Denoiser.UNET and "compile_warmup_s" not in switches:
        seconds = accel.warm_up(lambda: engine(Image.new("RGB", (side, side), "gray")), switches, style_name)
        if seconds is not None:
            switches["compile_warmup_s"] = seconds
    value = switches.get("compile_warmup_s")
    return float(value) if value is not None else None


def prepare_vae(loaded: LoadedModel, pipe: Any, size: tuple[int, int], native: int) -> bool:
    """VAE tiling on or off for this call (the VAE is shared: set before every call)."""
    return accel.set_vae_tiling(pipe, loaded.switches, max(size), native)


def performance(switches: dict[str, Any], vae_tiled: bool) -> dict[str, Any]:
    """What a variant records of the performance switches (``processor.models.accel``): the
    active ones, and whether its VAE decode was tiled."""
    return {k: v for k, v in switches.items() if v is not None} | {"vae_tiled": vae_tiled}


def revision(ref: ModelRef, resolved: ResolvedModel | None) -> str | None:
    return ref.revision or (resolved.revision if resolved else None)


def model_record(engine: str, style_name: str, style: DiffusionStyle, loaded: LoadedModel, pipe: Any, *,
                 scheduler: str | None, steps: int, size: tuple[int, int], dtype: Any, vae_tiled: bool) -> ModelRecord:
    return ModelRecord(
        engine=engine, style=style_name, model=style.model, revision=revision(style.ref, loaded.resolved),
        # Provenance: the repo's own safetensors, or its pickle weights converted here.
        weights="converted-from-pickle" if loaded.resolved.converted else "safetensors",
        pipeline=type(pipe).__name__, scheduler=scheduler, steps=steps, size=f"{size[0]}x{size[1]}",
        dtype=str(dtype).replace("torch.", ""), performance=performance(loaded.switches, vae_tiled),
        turbo_timestep_spacing=loaded.family.timestep_spacing if loaded.family.turbo else None)


def describe(engine: str, style_name: str, style: DiffusionStyle, models: ModelLoader, loaded: LoadedModel | None,
             pipe: Any, scheduler: str | None) -> dict[str, Any]:
    """For ``processor doctor``: the style's model, where it came from and what runs it."""
    return {
        "engine": engine,
        "style": style_name,
        "available": pipe is not None,
        "model": style.model,
        "revision": revision(style.ref, loaded.resolved if loaded else None),
        "pipeline": type(pipe).__name__ if pipe is not None else None,
        "device": models.device(),
        "dtype": str(models.dtype(loaded.family if loaded else None)).replace("torch.", ""),
        "scheduler": scheduler,
        "variants": style.variants,
        "seed": style.seed,
    } | ({"family": loaded.family.id.value} if loaded else {})

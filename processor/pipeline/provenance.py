"""What a diffusion variant records of how it was made: typed records built explicitly by each
engine, written out by ``parameters()`` as the manifest's ``variants[].parameters`` (and, through
``processor.pipeline.encode``, the PNG's A1111 infotext). Each ``parameters()`` lists its keys in
one fixed order, so equal runs write equal bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processor.models.families import Editor
from processor.pipeline.prompt import BuiltPrompt, StylePrompt


@dataclass(frozen=True)
class ModelRecord:
    """The model side of every diffusion variant: which weights, pipeline, scheduler and size."""

    engine: str
    style: str
    model: str
    #: The hub commit loaded (the pinned one, else the resolved), or None for a local folder.
    revision: str | None
    #: ``safetensors`` (the repo's own) or ``converted-from-pickle`` (``models pull --convert-pickle``).
    weights: str
    pipeline: str
    #: The style's scheduler name, or the model's own scheduler class (flow families, editors).
    scheduler: str | None
    steps: int
    #: ``WxH``, the working size.
    size: str
    dtype: str
    #: The performance switches active (``processor.models.accel``) and whether the VAE was tiled.
    performance: dict[str, Any]
    #: A turbo row's timestep spacing (recorded with ``turbo: true``); None: not a turbo style.
    turbo_timestep_spacing: str | None = None

    def parameters(self) -> dict[str, Any]:
        params = {"engine": self.engine, "style": self.style, "model": self.model, "revision": self.revision,
                  "weights": self.weights, "pipeline": self.pipeline, "scheduler": self.scheduler,
                  "steps": self.steps, "size": self.size, "dtype": self.dtype, "performance": dict(self.performance)}
        if self.turbo_timestep_spacing is not None:
            params |= {"turbo": True, "timestep_spacing": self.turbo_timestep_spacing}
        return params


@dataclass(frozen=True)
class T5PromptRecord:
    """The prompt a T5 encoder read beside CLIP (FLUX.1, SD 3, Kontext): fitted to its own limit,
    not CLIP's 77 tokens."""

    prompt: BuiltPrompt
    #: T5 tokens the pipeline reads (its ``max_sequence_length``).
    max_tokens: int

    def parameters(self) -> dict[str, Any]:
        return {"t5_prompt": self.prompt.text, "t5_prompt_tokens": self.prompt.tokens,
                "t5_prompt_truncated": self.prompt.truncated}


@dataclass(frozen=True)
class AdapterRecord:
    """One LoRA (or LCM-LoRA) the variant ran with."""

    source: str
    scale: float
    #: The hub commit loaded, or None for a local file or folder or a bucket key.
    revision: str | None


@dataclass(frozen=True)
class LoraRecord:
    lora: AdapterRecord | None = None
    lcm: AdapterRecord | None = None
    #: name -> A1111's short hash of each LoRA file (``Lora hashes``).
    hashes: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.lora is not None:
            params["lora"] = {"path": self.lora.source, "scale": self.lora.scale, "revision": self.lora.revision}
        if self.lcm is not None:
            params["lcm"] = {"lora": self.lcm.source, "scale": self.lcm.scale, "revision": self.lcm.revision}
        if self.hashes:
            params["lora_hashes"] = dict(self.hashes)
        return params


@dataclass(frozen=True)
class RefinerRecord:
    model: str
    revision: str | None
    pipeline: str
    steps: int


@dataclass(frozen=True)
class RoundRecord:
    """One img2img round of a variant's chain."""

    strength: float
    guidance: float
    #: Denoising steps the round ran (the family's rounding of steps x strength).
    denoising_steps: int
    #: Ran once for every variant of the input (``shared_rounds``).
    shared: bool
    seed: int
    #: The SDXL refiner's round (the last one), when the style has one.
    refiner: RefinerRecord | None = None

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"strength": self.strength, "guidance": self.guidance,
                                  "denoising_steps": self.denoising_steps, "shared": self.shared}
        if self.refiner is not None:
            params |= {"refiner": True, "model": self.refiner.model, "revision": self.refiner.revision,
                       "pipeline": self.refiner.pipeline, "steps": self.refiner.steps}
        params["seed"] = self.seed
        return params


@dataclass(frozen=True)
class FlowRecord:
    """What a flow-transformer img2img variant adds (FLUX.1, SD 3)."""

    #: The family's series (``flux``, ``sd3``).
    family: str
    #: FLUX.1 only: whether the transformer has the distilled-guidance input (dev: true, schnell: false).
    guidance_embedded: bool | None
    #: T5 tokens the pipeline read.
    max_sequence_length: int | None


@dataclass(frozen=True)
class Img2ImgRecord:
    model: ModelRecord
    prompt: StylePrompt
    seed: int
    rounds: list[RoundRecord]
    shared_rounds: int
    #: The steps this variant's image went through (its whole chain of rounds)...
    denoising_steps: int
    #: ...of which these ran once for all of this input's variants of the style...
    shared_denoising_steps: int
    #: ...so all of them together cost this many (shared steps counted once).
    denoising_steps_all_variants: int
    batch_size: int
    oom_halvings: int
    loras: LoraRecord = LoraRecord()
    #: ``IpAdapterUse.record``: the adapter and the picture that steered the variant.
    ip_adapter: dict[str, Any] | None = None
    flow: FlowRecord | None = None
    #: False when a negative prompt was given but no pass used it (no classifier-free guidance).
    negative_used: bool | None = None
    t5: T5PromptRecord | None = None
    #: Inputs whose variants shared this variant's pipeline calls (``run.batch_inputs``); 1: its own.
    batch_inputs: int = 1

    def parameters(self) -> dict[str, Any]:
        params = self.model.parameters() | self.prompt.parameters() | {
            "seed": self.seed,
            "rounds": [r.parameters() for r in self.rounds],
            "denoising_steps": self.denoising_steps,
            "shared_rounds": self.shared_rounds,
            "shared_denoising_steps": self.shared_denoising_steps,
            "denoising_steps_all_variants": self.denoising_steps_all_variants,
            "batch_size": self.batch_size,
            "oom_halvings": self.oom_halvings,
        } | self.loras.parameters()
        if self.batch_inputs > 1:
            params["batch_inputs"] = self.batch_inputs
        if self.ip_adapter is not None:
            params["ip_adapter"] = self.ip_adapter
        if self.flow is not None:
            params["family"] = self.flow.family
            if self.flow.guidance_embedded is not None:
                params["guidance_embedded"] = self.flow.guidance_embedded
            if self.flow.max_sequence_length is not None:
                params["max_sequence_length"] = self.flow.max_sequence_length
        if self.negative_used is False:
            params["negative_used"] = False
        if self.t5 is not None:
            params |= self.t5.parameters()
        return params


@dataclass(frozen=True)
class Txt2ImgRecord:
    model: ModelRecord
    prompt: StylePrompt
    seed: int
    guidance: float
    #: Every scheduler step denoises (no strength): the variant's UNet evaluations are
    #: steps x (2 with guidance > 1, else 1).
    denoising_steps: int
    denoising_steps_all_variants: int
    batch_size: int
    oom_halvings: int
    negative_used: bool | None = None

    def parameters(self) -> dict[str, Any]:
        params = self.model.parameters() | self.prompt.parameters() | {
            "seed": self.seed, "guidance": self.guidance, "denoising_steps": self.denoising_steps,
            "denoising_steps_all_variants": self.denoising_steps_all_variants, "batch_size": self.batch_size,
            "oom_halvings": self.oom_halvings}
        if self.negative_used is False:
            params["negative_used"] = False
        return params


@dataclass(frozen=True)
class EditRecord:
    """An instruction edit: instruct-pix2pix, FLUX.1 Kontext or Qwen-Image-Edit, each with its own keys."""

    model: ModelRecord
    editor: Editor
    instruction: str
    seed: int
    guidance: float
    denoising_steps: int
    batch_size: int
    oom_halvings: int
    #: instruct-pix2pix: the style's negative; Qwen-Image-Edit: the one its true CFG ran (None: none ran).
    negative: str | None = None
    #: instruct-pix2pix's image guidance.
    image_guidance: float | None = None
    #: Qwen-Image-Edit: whether true CFG ran, the transformer calls per variant, the photo copy's size.
    true_cfg: bool | None = None
    transformer_evals: int | None = None
    condition_size: str | None = None
    loras: LoraRecord = LoraRecord()
    #: False when a negative prompt was given and had no effect.
    negative_used: bool | None = None
    t5: T5PromptRecord | None = None

    def parameters(self) -> dict[str, Any]:
        params = self.model.parameters()
        if self.editor is not Editor.INSTRUCT_PIX2PIX:
            params["editor"] = self.editor.value
        params |= {"prompt": self.instruction, "instruction": self.instruction}
        if self.editor is Editor.INSTRUCT_PIX2PIX:
            params |= {"negative": self.negative, "seed": self.seed, "guidance": self.guidance,
                       "image_guidance": self.image_guidance, "denoising_steps": self.denoising_steps}
        elif self.editor is Editor.FLUX_KONTEXT:
            params |= {"seed": self.seed, "guidance": self.guidance, "denoising_steps": self.denoising_steps}
        else:
            params |= {"negative": self.negative, "seed": self.seed, "guidance": self.guidance,
                       "true_cfg_scale": self.guidance, "true_cfg": self.true_cfg,
                       "denoising_steps": self.denoising_steps, "transformer_evals": self.transformer_evals,
                       "condition_size": self.condition_size}
        params |= {"batch_size": self.batch_size, "oom_halvings": self.oom_halvings} | self.loras.parameters()
        if self.negative_used is False:
            params["negative_used"] = False
        if self.t5 is not None:
            params |= {"max_sequence_length": self.t5.max_tokens} | self.t5.parameters()
        return params


@dataclass(frozen=True)
class AnimateRecord:
    """A clip (``engine: animate``): the family and its motion settings, the frames, the picture it
    started from, and the denoiser work it cost."""

    model: ModelRecord
    #: The family table row (``svd``, ``svd-xt``, ``wan-i2v``, ``wan-ti2v``, ``ltx-video``).
    family: str
    seed: int
    frames: int
    fps: int
    duration_s: float
    #: Whether the model was told the fps (SVD, LTX-Video) or plays at its training rate (Wan).
    fps_conditioned: bool
    #: The family's knobs as they ran (the style's, else the family's defaults), by style key.
    motion: dict[str, Any]
    #: The picture animated: ``{"kind": "photo"}`` or the still variant's style, index and seed.
    source: dict[str, Any]
    #: Denoiser (UNet or transformer) calls for the clip, and the samples they evaluated
    #: (classifier-free guidance: two per step, in one batched call or in two).
    denoiser_calls: int
    denoiser_evaluations: int
    oom_halvings: int = 0
    #: The prompt (Wan, LTX-Video); None for a family that reads no text.
    prompt: StylePrompt | None = None
    #: False when a negative prompt was given and nothing read it.
    negative_used: bool | None = None

    def parameters(self) -> dict[str, Any]:
        params = self.model.parameters() | {"family": self.family}
        if self.prompt is not None:
            params |= self.prompt.parameters()
        params |= {"seed": self.seed, "frames": self.frames, "fps": self.fps, "duration_s": self.duration_s,
                   "fps_conditioned": self.fps_conditioned} | dict(self.motion) | {
            "source": dict(self.source), "denoiser_calls": self.denoiser_calls,
            "denoiser_evaluations": self.denoiser_evaluations, "oom_halvings": self.oom_halvings}
        if self.negative_used is False:
            params["negative_used"] = False
        return params


"""Model families as data: one row per family of diffusion models this worker runs.

A row says what the engines, the loader and the benchmarks need to know about a family: the
diffusers pipeline class per task, the native size and the working-size multiple, the dtype it
wants on a GPU, its text encoders and their token limits, how ``steps x strength`` rounds into
denoising steps, what its guidance is, and which style options (``lora``, ``lcm``, ``control``,
``ip_adapter``, ``refiner``, ``turbo``) it runs.

Which family a model is comes from its ``model_index.json`` ``_class_name`` (``identify``; the one
place that file is read for it), and where the class name does not tell, from one key of a
component's ``config.json``: the UNet's ``in_channels`` (4: text-to-image, 8: instruct-pix2pix,
9: inpainting), FLUX.1's ``guidance_embeds`` (dev has the distilled-guidance input, schnell not),
SD 3's ``qk_norm`` (SD 3.5 normalises queries and keys, SD 3 medium not). Turbo models
(SD-Turbo, SDXL-Turbo) have their base's architecture and files: ``turbo: true`` on a style picks
the turbo row of its family (``Family.turbo_row``).

The image-to-video families (``VIDEO_FAMILIES``: Stable Video Diffusion, Wan 2.x, LTX-Video) are
rows of the same shape with ``video`` set (``VideoTraits``: clip length, fps, the motion keys they
take and their defaults, how their guidance is evaluated, their published licence); they run one
task, ``Task.VIDEO`` (``engine: animate``). SVD-XT is told from SVD by its UNet's ``num_frames``
(25), Wan 2.1 / 2.2 A14B image-to-video from Wan 2.2 TI2V 5B by the transformer's ``in_channels``.

Importing this module imports neither torch nor diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from processor.config import StyleOption
from processor.errors import ConfigError, ModelUnavailableError

#: The file every diffusers pipeline folder holds: its pipeline class and components.
MODEL_INDEX = "model_index.json"


class Task(str, Enum):
    """What a pipeline object is derived for (``ModelLoader.pipeline``)."""

    IMG2IMG = "img2img"
    TXT2IMG = "text2img"
    INSTRUCT_PIX2PIX = "instruct-pix2pix"
    #: The instruction editors' own pipeline (FLUX.1 Kontext, Qwen-Image-Edit).
    EDIT = "edit"
    INPAINT = "inpaint"
    CONTROLNET_IMG2IMG = "controlnet-img2img"
    CONTROLNET_TXT2IMG = "controlnet-text2img"
    ADAPTER_TXT2IMG = "adapter-text2img"
    #: Image to video (``engine: animate``): Stable Video Diffusion, Wan 2.x and LTX-Video.
    VIDEO = "video"


class Denoiser(str, Enum):
    UNET = "UNet"
    TRANSFORMER = "flow transformer"


class StepRounding(str, Enum):
    """How a pipeline turns ``num_inference_steps`` and ``strength`` into denoising steps (the
    ``get_timesteps`` of its img2img pipeline)."""

    #: UNet (DDPM-family) schedulers: ``int(steps * strength)``.
    TRUNCATE = "truncate"
    #: Flow-matching schedulers: ``steps - int(steps - steps * strength)``, one more whenever
    #: ``steps * strength`` is not whole.
    FLOW = "flow"


class Guidance(str, Enum):
    """What the style's ``guidance`` is to the family."""

    #: Classifier-free guidance: a second, negative-prompt evaluation per step when above 1.
    CFG = "cfg"
    #: A distilled guidance input (FLUX.1 dev, Kontext): one evaluation, no negative prompt.
    DISTILLED = "distilled"
    #: No guidance input at all (FLUX.1 schnell): guidance must be 0.
    NONE = "none"
    #: Qwen-Image's true CFG (``true_cfg_scale``): a second call per step when above 1.
    TRUE_CFG = "true-cfg"

    def uses_negative(self, scale: float) -> bool:
        """Whether a negative prompt changes the output at this guidance scale."""
        return self in (Guidance.CFG, Guidance.TRUE_CFG) and scale > 1


class SchedulerChoice(str, Enum):
    #: The style's ``scheduler`` key (DDPM-family samplers: ``processor.pipeline.sampling``).
    STYLE = "style"
    #: The model's own (flow-matching) scheduler; the style's key does not apply.
    MODEL = "model"


class Editor(str, Enum):
    """The instruction editors; the value is what ``engine: edit`` variants record as ``editor``."""

    INSTRUCT_PIX2PIX = "instruct-pix2pix"
    FLUX_KONTEXT = "flux-kontext"
    QWEN_IMAGE_EDIT = "qwen-image-edit"
    QWEN_IMAGE_EDIT_PLUS = "qwen-image-edit-plus"


class EncoderKind(str, Enum):
    CLIP = "clip"
    T5 = "t5"
    QWEN_VL = "qwen2.5-vl"


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a pipeline and how the prompt reaches it."""

    kind: EncoderKind
    #: The pipeline attribute holding its tokenizer.
    tokenizer: str
    #: Tokens it reads (start and end tokens included); a longer prompt is cut to fit.
    max_tokens: int
    #: The pipeline keywords of its prompt and negative prompt.
    prompt_keyword: str = "prompt"
    negative_keyword: str = "negative_prompt"


#: CLIP's context: 77 tokens, start and end included.
CLIP_TOKENS = 77
#: T5 tokens FLUX.1 schnell and SD 3 read (their pipelines' ``max_sequence_length`` default for SD 3;
#: schnell was distilled with 256).
T5_TOKENS_SHORT = 256
#: T5 tokens FLUX.1 dev and Kontext read (their pipelines' default and limit).
T5_TOKENS_LONG = 512
#: Tokens Qwen-Image-Edit's Qwen2.5-VL reads (its pipeline's ``tokenizer_max_length``).
QWEN_VL_TOKENS = 1024

_CLIP = TextEncoder(EncoderKind.CLIP, "tokenizer", CLIP_TOKENS)
_CLIP_2 = TextEncoder(EncoderKind.CLIP, "tokenizer_2", CLIP_TOKENS, "prompt_2", "negative_prompt_2")
_FLUX_T5_SHORT = TextEncoder(EncoderKind.T5, "tokenizer_2", T5_TOKENS_SHORT, "prompt_2", "negative_prompt_2")
_FLUX_T5_LONG = TextEncoder(EncoderKind.T5, "tokenizer_2", T5_TOKENS_LONG, "prompt_2", "negative_prompt_2")
_SD3_T5 = TextEncoder(EncoderKind.T5, "tokenizer_3", T5_TOKENS_SHORT, "prompt_3", "negative_prompt_3")
_QWEN_VL = TextEncoder(EncoderKind.QWEN_VL, "tokenizer", QWEN_VL_TOKENS)


@dataclass(frozen=True)
class ConfigKey:
    """A value one component's ``config.json`` must hold for a row to match."""

    component: str
    key: str
    value: Any


class FamilyId(str, Enum):
    SD = "sd"
    SD_PIX2PIX = "sd-instruct-pix2pix"
    SD_INPAINT = "sd-inpaint"
    SD_TURBO = "sd-turbo"
    SDXL = "sdxl"
    SDXL_PIX2PIX = "sdxl-instruct-pix2pix"
    SDXL_INPAINT = "sdxl-inpaint"
    SDXL_TURBO = "sdxl-turbo"
    FLUX_DEV = "flux-dev"
    FLUX_SCHNELL = "flux-schnell"
    SD3_5 = "sd3.5"
    SD3 = "sd3"
    FLUX_KONTEXT = "flux-kontext"
    QWEN_IMAGE_EDIT = "qwen-image-edit"
    QWEN_IMAGE_EDIT_PLUS = "qwen-image-edit-plus"
    SVD = "svd"
    SVD_XT = "svd-xt"
    WAN_I2V = "wan-i2v"
    WAN_TI2V = "wan-ti2v"
    LTX = "ltx-video"


class VideoKnob(str, Enum):
    """The ``engine: animate`` keys only some image-to-video families take (``VideoTraits.knobs``);
    the value is the key as written under ``styles.<name>``. Setting one the family does not take
    is refused at start, naming the key."""

    #: ``prompt`` and ``trigger``: the family reads text (Wan, LTX); SVD reads the photo alone.
    PROMPT = "prompt"
    #: Classifier-free guidance against ``negative`` (Wan, LTX).
    GUIDANCE = "guidance"
    #: SVD: how much motion (its micro-conditioning; higher moves more).
    MOTION_BUCKET_ID = "motion_bucket_id"
    #: SVD: noise added to the photo's conditioning latent (more: freer motion, less likeness).
    NOISE_AUG_STRENGTH = "noise_aug_strength"
    #: SVD: classifier-free guidance ramped linearly over the frames, from the first to the last.
    MIN_GUIDANCE = "min_guidance"
    MAX_GUIDANCE = "max_guidance"
    #: SVD: frames its temporal VAE decodes at once (the decode's peak memory).
    DECODE_CHUNK_SIZE = "decode_chunk_size"
    #: LTX-Video: the timestep and noise of its timestep-conditioned VAE decode (0.9.1 and later).
    DECODE_TIMESTEP = "decode_timestep"
    DECODE_NOISE_SCALE = "decode_noise_scale"


class VideoKind(str, Enum):
    """Which image-to-video pipeline a family runs: what its call takes differs per kind."""

    SVD = "svd"
    WAN = "wan"
    LTX = "ltx"


class FrameSource(str, Enum):
    """Where a family's default clip length comes from."""

    #: The family table (``VideoTraits.frames``).
    TABLE = "table"
    #: The loaded UNet's ``num_frames`` (SVD: 14, SVD-XT: 25; a fine-tune keeps its own).
    UNET_CONFIG = "unet-config"


class CfgCalls(str, Enum):
    """How a video pipeline evaluates classifier-free guidance: the denoiser calls per step."""

    #: The negative and positive samples in one batched call (SVD, LTX).
    BATCHED = "batched"
    #: A second call per step (Wan).
    SEPARATE = "separate"


@dataclass(frozen=True)
class VideoTraits:
    """What an image-to-video family adds to its row (``Family.video``)."""

    kind: VideoKind
    #: Frames of the reference checkpoint's clip: a style's default ``frames``.
    frames: int
    #: Frames per second it was trained for: a style's default ``fps``.
    fps: int
    #: Clip lengths are ``k * frame_step + 1`` (the VAE's temporal compression); 1: any length.
    frame_step: int
    #: Whether the pipeline is told the fps (SVD's micro-conditioning, LTX's rotary positions);
    #: Wan is not, and plays at its training rate.
    fps_input: bool
    knobs: frozenset[VideoKnob]
    #: The knob values a style that sets none runs with (the model cards' / pipelines' defaults).
    defaults: Mapping[VideoKnob, float]
    cfg_calls: CfgCalls
    #: The licence of the family's published weights, as ``license:`` names it; a style on a
    #: ``non-commercial`` family must declare that licence (``run.allow_noncommercial`` gates it).
    published_license: str
    frames_from: FrameSource = FrameSource.TABLE


@dataclass(frozen=True)
class Family:
    """One family of models (see the module docstring)."""

    id: FamilyId
    #: How messages name it ("SDXL", "FLUX.1 dev").
    label: str
    #: The line of models it belongs to; flow img2img variants record it as ``family``.
    series: str
    #: ``model_index.json`` ``_class_name`` values of its folders.
    class_names: tuple[str, ...]
    denoiser: Denoiser
    #: The diffusers pipeline class per task it runs here (``from_pipe`` over its base pipeline).
    pipelines: Mapping[Task, str]
    #: Pixels: the long side it was trained at (the reference checkpoint's).
    native_size: int
    #: Pixels: working sides are multiples of this (VAE 8x; flow transformers' 2x2 patches: 16).
    size_multiple: int
    #: The dtype it wants on a GPU under ``models.dtype: auto``.
    dtype: str
    #: Its text encoders, the one ``prompt`` feeds first.
    text_encoders: tuple[TextEncoder, ...]
    rounding: StepRounding
    guidance: Guidance
    scheduler: SchedulerChoice
    #: The style options it runs; any other set on a style is refused at start.
    options: frozenset[StyleOption]
    #: Component config values that tell this row from others of the same class names.
    config: tuple[ConfigKey, ...] = ()
    #: UNet input channels (4, 8 or 9), for messages; None for a transformer.
    unet_channels: int | None = None
    #: True: the native size is read from the loaded model's config (UNet or SD 3 transformer
    #: ``sample_size`` x VAE factor), so a fine-tune at another size keeps its own.
    native_from_config: bool = False
    #: The instruction editor it is (``engine: edit`` / ``instruct-pix2pix``), if one.
    editor: Editor | None = None
    #: ``guidance`` when an editor style sets none (the model card's).
    default_guidance: float | None = None
    #: The row ``turbo: true`` picks (SD-Turbo, SDXL-Turbo); None: no turbo model of this family.
    turbo_row: FamilyId | None = None
    #: A turbo row: distilled without guidance for 1-4 steps on these timesteps.
    turbo: bool = False
    timestep_spacing: str | None = None
    #: Its activations overflow float16 (NaN latents, black pictures): float16 is refused.
    refuses_float16: bool = False
    #: An image-to-video family (``engine: animate``): its clip length, fps and motion keys.
    video: VideoTraits | None = None

    @property
    def prompt_encoder(self) -> TextEncoder:
        """The encoder the ``prompt`` keyword feeds (CLIP, or Qwen-Image's VL model)."""
        return self.text_encoders[0]

    @property
    def t5(self) -> TextEncoder | None:
        """The T5 encoder reading a longer prompt beside CLIP (FLUX.1, SD 3, Kontext), if any."""
        return next((e for e in self.text_encoders if e.kind is EncoderKind.T5), None)

    def denoising_steps(self, steps: int, strength: float) -> int:
        """The denoising steps an img2img call of ``steps`` at ``strength`` runs, computed as the
        family's diffusers pipeline does (its ``get_timesteps``), float arithmetic included."""
        if self.rounding is StepRounding.FLOW:
            start = int(max(steps - min(steps * strength, steps), 0))
        else:
            start = max(steps - min(int(steps * strength), steps), 0)
        return steps - start


_SD_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
               "StableDiffusionInstructPix2PixPipeline")
_SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                 "StableDiffusionXLInpaintPipeline", "StableDiffusionXLInstructPix2PixPipeline")
_UNET_ADDONS = frozenset({StyleOption.LORA, StyleOption.LCM, StyleOption.CONTROL, StyleOption.IP_ADAPTER,
                          StyleOption.TURBO})
_TURBO_ADDONS = frozenset({StyleOption.LORA, StyleOption.CONTROL, StyleOption.IP_ADAPTER, StyleOption.TURBO})
_FLOW_ADDONS = frozenset({StyleOption.LORA})
_NO_ADDONS: frozenset[StyleOption] = frozenset()

_SD_TASKS = {Task.IMG2IMG: "StableDiffusionImg2ImgPipeline", Task.TXT2IMG: "StableDiffusionPipeline",
             Task.CONTROLNET_IMG2IMG: "StableDiffusionControlNetImg2ImgPipeline",
             Task.CONTROLNET_TXT2IMG: "StableDiffusionControlNetPipeline",
             Task.ADAPTER_TXT2IMG: "StableDiffusionAdapterPipeline"}
_SDXL_TASKS = {Task.IMG2IMG: "StableDiffusionXLImg2ImgPipeline", Task.TXT2IMG: "StableDiffusionXLPipeline",
               Task.CONTROLNET_IMG2IMG: "StableDiffusionXLControlNetImg2ImgPipeline",
               Task.CONTROLNET_TXT2IMG: "StableDiffusionXLControlNetPipeline",
               Task.ADAPTER_TXT2IMG: "StableDiffusionXLAdapterPipeline"}


def _unet(fid: FamilyId, label: str, series: str, classes: tuple[str, ...], channels: int,
          tasks: Mapping[Task, str], native: int, encoders: tuple[TextEncoder, ...], options: frozenset[StyleOption],
          **extra: Any) -> Family:
    """A UNet row: DDPM-family samplers named by the style, CFG, float16, 8 px multiples."""
    return Family(fid, label, series, classes, Denoiser.UNET, tasks, native, 8, "float16", encoders,
                  StepRounding.TRUNCATE, Guidance.CFG, SchedulerChoice.STYLE, options,
                  config=(ConfigKey("unet", "in_channels", channels),), unet_channels=channels,
                  native_from_config=True, **extra)


#: Every family, in lookup order: a row with config keys before the row its class names fall back to.
FAMILIES: tuple[Family, ...] = (
    _unet(FamilyId.SD, "SD 1.x / 2.x", "sd", _SD_CLASSES, 4, _SD_TASKS, 512, (_CLIP,), _UNET_ADDONS,
          turbo_row=FamilyId.SD_TURBO),
    _unet(FamilyId.SD_PIX2PIX, "SD 1.x instruct-pix2pix", "sd", _SD_CLASSES, 8,
          {Task.INSTRUCT_PIX2PIX: "StableDiffusionInstructPix2PixPipeline"}, 512, (_CLIP,), _NO_ADDONS,
          editor=Editor.INSTRUCT_PIX2PIX),
    _unet(FamilyId.SD_INPAINT, "SD 1.x / 2.x inpainting", "sd", _SD_CLASSES, 9,
          {Task.INPAINT: "StableDiffusionInpaintPipeline"}, 512, (_CLIP,), _NO_ADDONS),
    _unet(FamilyId.SDXL, "SDXL", "sdxl", _SDXL_CLASSES, 4, _SDXL_TASKS, 1024, (_CLIP, _CLIP_2),
          _UNET_ADDONS | {StyleOption.REFINER}, turbo_row=FamilyId.SDXL_TURBO),
    _unet(FamilyId.SDXL_PIX2PIX, "SDXL instruct-pix2pix", "sdxl", _SDXL_CLASSES, 8,
          {Task.INSTRUCT_PIX2PIX: "StableDiffusionXLInstructPix2PixPipeline"}, 1024, (_CLIP, _CLIP_2), _NO_ADDONS,
          editor=Editor.INSTRUCT_PIX2PIX),
    _unet(FamilyId.SDXL_INPAINT, "SDXL inpainting", "sdxl", _SDXL_CLASSES, 9,
          {Task.INPAINT: "StableDiffusionXLInpaintPipeline"}, 1024, (_CLIP, _CLIP_2), _NO_ADDONS),
    Family(FamilyId.FLUX_DEV, "FLUX.1 dev", "flux", ("FluxPipeline", "FluxImg2ImgPipeline"), Denoiser.TRANSFORMER,
           {Task.IMG2IMG: "FluxImg2ImgPipeline"}, 1024, 16, "bfloat16", (_CLIP, _FLUX_T5_LONG), StepRounding.FLOW,
           Guidance.DISTILLED, SchedulerChoice.MODEL, _FLOW_ADDONS,
           config=(ConfigKey("transformer", "guidance_embeds", True),)),
    Family(FamilyId.FLUX_SCHNELL, "FLUX.1 schnell", "flux", ("FluxPipeline", "FluxImg2ImgPipeline"),
           Denoiser.TRANSFORMER, {Task.IMG2IMG: "FluxImg2ImgPipeline"}, 1024, 16, "bfloat16",
           (_CLIP, _FLUX_T5_SHORT), StepRounding.FLOW, Guidance.NONE, SchedulerChoice.MODEL, _FLOW_ADDONS),
    Family(FamilyId.SD3_5, "SD 3.5", "sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
           Denoiser.TRANSFORMER, {Task.IMG2IMG: "StableDiffusion3Img2ImgPipeline"}, 1024, 16, "bfloat16",
           (_CLIP, _CLIP_2, _SD3_T5), StepRounding.FLOW, Guidance.CFG, SchedulerChoice.MODEL, _FLOW_ADDONS,
           config=(ConfigKey("transformer", "qk_norm", "rms_norm"),), native_from_config=True),
    Family(FamilyId.SD3, "SD 3", "sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
           Denoiser.TRANSFORMER, {Task.IMG2IMG: "StableDiffusion3Img2ImgPipeline"}, 1024, 16, "float16",
           (_CLIP, _CLIP_2, _SD3_T5), StepRounding.FLOW, Guidance.CFG, SchedulerChoice.MODEL, _FLOW_ADDONS,
           native_from_config=True),
    Family(FamilyId.FLUX_KONTEXT, "FLUX.1 Kontext", "flux", ("FluxKontextPipeline",), Denoiser.TRANSFORMER,
           {Task.EDIT: "FluxKontextPipeline"}, 1024, 16, "bfloat16", (_CLIP, _FLUX_T5_LONG), StepRounding.FLOW,
           Guidance.DISTILLED, SchedulerChoice.MODEL, _FLOW_ADDONS, editor=Editor.FLUX_KONTEXT, default_guidance=2.5),
    Family(FamilyId.QWEN_IMAGE_EDIT, "Qwen-Image-Edit", "qwen-image", ("QwenImageEditPipeline",),
           Denoiser.TRANSFORMER, {Task.EDIT: "QwenImageEditPipeline"}, 1024, 16, "bfloat16", (_QWEN_VL,),
           StepRounding.FLOW, Guidance.TRUE_CFG, SchedulerChoice.MODEL, _FLOW_ADDONS,
           editor=Editor.QWEN_IMAGE_EDIT, default_guidance=4.0, refuses_float16=True),
    Family(FamilyId.QWEN_IMAGE_EDIT_PLUS, "Qwen-Image-Edit (2509 and later)", "qwen-image",
           ("QwenImageEditPlusPipeline",), Denoiser.TRANSFORMER, {Task.EDIT: "QwenImageEditPlusPipeline"}, 1024, 16,
           "bfloat16", (_QWEN_VL,), StepRounding.FLOW, Guidance.TRUE_CFG, SchedulerChoice.MODEL, _FLOW_ADDONS,
           editor=Editor.QWEN_IMAGE_EDIT_PLUS, default_guidance=4.0, refuses_float16=True),
    # Turbo rows: reached through ``turbo_row`` (the files are their base's), never by class name.
    _unet(FamilyId.SD_TURBO, "SD-Turbo", "sd", (), 4, _SD_TASKS, 512, (_CLIP,), _TURBO_ADDONS, turbo=True,
          timestep_spacing="trailing"),
    _unet(FamilyId.SDXL_TURBO, "SDXL-Turbo", "sdxl", (), 4, _SDXL_TASKS, 1024, (_CLIP, _CLIP_2), _TURBO_ADDONS,
          turbo=True, timestep_spacing="trailing"),
)

#: T5 tokens Wan's UMT5 encoder reads (its pipelines' ``max_sequence_length``).
WAN_T5_TOKENS = 512
#: T5 tokens LTX-Video's image-to-video pipeline reads (its ``max_sequence_length`` default).
LTX_T5_TOKENS = 128
_WAN_T5 = TextEncoder(EncoderKind.T5, "tokenizer", WAN_T5_TOKENS)
_LTX_T5 = TextEncoder(EncoderKind.T5, "tokenizer", LTX_T5_TOKENS)

_SVD_KNOBS = frozenset({VideoKnob.MOTION_BUCKET_ID, VideoKnob.NOISE_AUG_STRENGTH, VideoKnob.MIN_GUIDANCE,
                        VideoKnob.MAX_GUIDANCE, VideoKnob.DECODE_CHUNK_SIZE})
#: SVD's card and pipeline: motion bucket 127, noise augmentation 0.02, guidance ramped 1 -> 3;
#: 8 frames decoded at a time (the card's example; the pipeline's own default decodes them all).
_SVD_DEFAULTS = {VideoKnob.MOTION_BUCKET_ID: 127, VideoKnob.NOISE_AUG_STRENGTH: 0.02, VideoKnob.MIN_GUIDANCE: 1.0,
                 VideoKnob.MAX_GUIDANCE: 3.0, VideoKnob.DECODE_CHUNK_SIZE: 8}


def _svd(fid: FamilyId, label: str, frames: int, config: tuple[ConfigKey, ...]) -> Family:
    """A Stable Video Diffusion row: the photo alone steers it (no text), 7 fps, its own Euler scheduler."""
    return Family(fid, label, "svd", ("StableVideoDiffusionPipeline",), Denoiser.UNET,
                  {Task.VIDEO: "StableVideoDiffusionPipeline"}, 1024, 8, "float16", (), StepRounding.TRUNCATE,
                  Guidance.CFG, SchedulerChoice.MODEL, _NO_ADDONS, config=config, unet_channels=8,
                  video=VideoTraits(VideoKind.SVD, frames, 7, 1, True, _SVD_KNOBS, _SVD_DEFAULTS, CfgCalls.BATCHED,
                                    "non-commercial", FrameSource.UNET_CONFIG))


def _wan(fid: FamilyId, label: str, channels: int, native: int, multiple: int, frames: int, fps: int) -> Family:
    """A Wan row: a flow transformer told apart by its input channels (36: noise + mask + the photo's
    latent; 48: Wan 2.2 TI2V's 48-channel latent); CFG as a second call per step."""
    return Family(fid, label, "wan", ("WanImageToVideoPipeline", "WanPipeline"), Denoiser.TRANSFORMER,
                  {Task.VIDEO: "WanImageToVideoPipeline"}, native, multiple, "bfloat16", (_WAN_T5,), StepRounding.FLOW,
                  Guidance.CFG, SchedulerChoice.MODEL, _NO_ADDONS,
                  config=(ConfigKey("transformer", "in_channels", channels),),
                  video=VideoTraits(VideoKind.WAN, frames, fps, 4, False,
                                    frozenset({VideoKnob.PROMPT, VideoKnob.GUIDANCE}), {VideoKnob.GUIDANCE: 5.0},
                                    CfgCalls.SEPARATE, "apache-2.0"))


#: The image-to-video families (``engine: animate``), in lookup order: SVD-XT (its UNet built for 25
#: frames) before SVD; Wan's rows by transformer input channels.
VIDEO_FAMILIES: tuple[Family, ...] = (
    _svd(FamilyId.SVD_XT, "Stable Video Diffusion XT", 25, (ConfigKey("unet", "num_frames", 25),)),
    _svd(FamilyId.SVD, "Stable Video Diffusion", 14, ()),
    _wan(FamilyId.WAN_I2V, "Wan 2.x image-to-video", 36, 832, 16, 81, 16),
    # Wan 2.2's VAE is 16x in space: with 2x2 patches a side is a multiple of 32.
    _wan(FamilyId.WAN_TI2V, "Wan 2.2 TI2V", 48, 1280, 32, 121, 24),
    Family(FamilyId.LTX, "LTX-Video", "ltx", ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"),
           Denoiser.TRANSFORMER, {Task.VIDEO: "LTXImageToVideoPipeline"}, 704, 32, "bfloat16", (_LTX_T5,),
           StepRounding.FLOW, Guidance.CFG, SchedulerChoice.MODEL, _NO_ADDONS,
           video=VideoTraits(VideoKind.LTX, 121, 25, 8, True, frozenset({VideoKnob.PROMPT, VideoKnob.GUIDANCE,
                                                          VideoKnob.DECODE_TIMESTEP, VideoKnob.DECODE_NOISE_SCALE}),
                             {VideoKnob.GUIDANCE: 3.0, VideoKnob.DECODE_TIMESTEP: 0.0}, CfgCalls.BATCHED, "other")),
)

#: Every row ``identify`` reads: the still-image families, then the image-to-video ones.
ALL_FAMILIES: tuple[Family, ...] = FAMILIES + VIDEO_FAMILIES

_BY_ID = {family.id: family for family in ALL_FAMILIES}


def family(fid: FamilyId) -> Family:
    return _BY_ID[fid]


def families_with(option: StyleOption) -> list[Family]:
    """The families that run ``option`` (turbo rows aside)."""
    return [f for f in FAMILIES if option in f.options and not f.turbo]


@dataclass(frozen=True)
class FamilyMatch:
    """What ``identify`` found in a model folder."""

    family: Family
    #: ``model_index.json`` ``_class_name`` as the folder declares it.
    class_name: str
    #: The whole ``model_index.json`` (its components, for the loader).
    index: Mapping[str, Any] = field(default_factory=dict)


def read_model_index(folder: Path) -> dict[str, Any]:
    """A pipeline folder's ``model_index.json``; ``ModelUnavailableError`` naming the folder when
    it is missing or unreadable."""
    path = folder / MODEL_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailableError(f"{folder} is not a diffusers pipeline folder (no {MODEL_INDEX})") from None
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(index, dict):
        raise ModelUnavailableError(f"{path} is not a JSON object")
    return index


def _config_value(folder: Path, component: str, key: str, cache: dict[str, dict[str, Any]]) -> Any:
    if component not in cache:
        try:
            cache[component] = json.loads((folder / component / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache[component] = {}
    return cache[component].get(key)


def identify(folder: Path, model: str | None = None) -> FamilyMatch:
    """The family of the pipeline folder ``folder`` (``model``: how the config names it, for
    messages). ``ConfigError`` for a pipeline class no row runs, naming the families that run."""
    index = read_model_index(folder)
    class_name = str(index.get("_class_name", ""))
    configs: dict[str, dict[str, Any]] = {}
    candidates = [f for f in ALL_FAMILIES if class_name in f.class_names]
    for row in candidates:
        if all(_config_value(folder, c.component, c.key, configs) == c.value for c in row.config):
            return FamilyMatch(row, class_name, index)
    name = model or str(folder)
    if candidates:
        keys = sorted({f"{c.component}/config.json {c.key}" for row in candidates for c in row.config})
        raise ConfigError(f"model {name!r} is a {class_name} whose {', '.join(keys)} matches no family this worker "
                          f"runs ({', '.join(row.label for row in candidates)}); use a checkpoint of one of them")
    known = ", ".join(dict.fromkeys(f.label for f in ALL_FAMILIES if f.class_names))
    raise ConfigError(f"model {name!r} is a {class_name or 'pipeline without _class_name'} ({MODEL_INDEX}); the "
                      f"families this worker runs are {known}: use a model of one of them")


#: dtype names ``models.dtype`` takes besides ``auto``.
DTYPES = ("float16", "bfloat16", "float32")


def choose_dtype(setting: str, family: Family | None, *, on_gpu: bool) -> str:
    """The dtype a model loads in: ``setting`` unless ``auto``; under ``auto`` float32 on the CPU
    and the family's own on a GPU (bfloat16 for FLUX.1, SD 3.5, Kontext and Qwen-Image-Edit,
    float16 for the rest; float16 for models outside the table, such as ControlNets)."""
    if setting != "auto":
        return setting
    if not on_gpu:
        return "float32"
    return family.dtype if family is not None else "float16"

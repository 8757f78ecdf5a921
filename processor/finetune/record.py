"""The training record: exactly what was trained, written beside the LoRA as ``training_record.json``.

It is also each checkpoint's state (the loss so far), so a resumed run continues the same record.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from processor.manifest import utcnow

RECORD_SCHEMA = "toy-cartoonizer/finetune-record/v1"
#: The record's name beside the LoRA and in each checkpoint.
RECORD_NAME = "training_record.json"
#: The LoRA file diffusers' ``load_lora_weights`` looks for by default.
LORA_NAME = "pytorch_lora_weights.safetensors"


class Mode(str, Enum):
    #: Learn a look from many images with their captions.
    style = "style"
    #: DreamBooth: learn one subject (the user's own toy) under an instance prompt.
    subject = "subject"


class CaptionSource(str, Enum):
    #: The product's captioner (``caption.*`` settings) on each image.
    auto = "auto"
    #: ``<image>.txt`` beside each image.
    files = "files"
    #: ``--prompt`` for every image.
    none = "none"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Model):
    """Everything that changes what is trained; a resumed run must match these exactly."""

    mode: Mode
    steps: int = Field(ge=1)
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    lr: float = Field(gt=0)
    batch: int = Field(ge=1)
    resolution: int = Field(ge=8)
    seed: int = Field(ge=0)
    captions: CaptionSource
    prompt: str | None = None
    instance_prompt: str | None = None
    #: Subject mode with prior preservation: the class prompt and how many class images.
    class_prompt: str | None = None
    prior_images: int = 0
    prior_weight: float = 1.0
    snr_gamma: float | None = None
    #: UNet modules the LoRA wraps.
    target_modules: list[str]
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    random_flip: bool = True
    #: Precision of the frozen weights and the forward pass: float32, float16, bfloat16.
    mixed_precision: str
    gradient_checkpointing: bool
    #: The scheduler's prediction type the loss targets (epsilon or v_prediction).
    prediction_type: str | None = None


class BaseModelInfo(_Model):
    #: As given to --base: hub id or local folder.
    model: str
    #: The hub commit trained on, or None for a local folder.
    revision: str | None = None
    pipeline: str | None = None


class DatasetImage(_Model):
    key: str
    sha256: str
    width: int
    height: int
    caption: str


class SkippedImage(_Model):
    key: str
    reason: str


class Versions(_Model):
    processor: str
    torch: str
    diffusers: str
    peft: str
    transformers: str


class TrainingRecord(_Model):
    schema_: str = Field(default=RECORD_SCHEMA, alias="schema")
    name: str
    base: BaseModelInfo
    hyperparameters: Hyperparameters
    #: Where the images were read: a local folder or a store and prefix (keys are relative to it).
    images: str
    dataset: list[DatasetImage]
    skipped: list[SkippedImage] = Field(default_factory=list)
    #: Class images generated for prior preservation (subject mode).
    class_images: list[DatasetImage] = Field(default_factory=list)
    #: loss[i] is the loss of step i + 1.
    loss: list[float] = Field(default_factory=list)
    #: The loss on fixed noise and timesteps over the validation photos, by step (0: before
    #: training, then each checkpoint and the end): comparable across steps, unlike ``loss``.
    validation_loss: dict[int, float] = Field(default_factory=dict)
    steps_done: int = 0
    #: Steps at which a checkpoint was written, and the steps a run resumed from.
    checkpoints: list[int] = Field(default_factory=list)
    resumed_from: list[int] = Field(default_factory=list)
    device: str
    seed: int
    versions: Versions
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    #: Seconds of steps, validation and checkpoints, summed over every run that contributed
    #: (resumes included; model loading excluded).
    train_seconds: float = 0.0
    #: Where the LoRA was written (a key or a path), once finished.
    lora: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"

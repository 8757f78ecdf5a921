"""What stages exchange, and the Engine protocol every style engine implements.

An engine loads whatever it needs in ``setup()`` (once per worker) and does per-item work in
``__call__`` (cog's ``BasePredictor``). Engines raise ``ItemError`` subclasses for per-input
problems; anything else they raise is wrapped into ``StageFailed`` by the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from processor.config import DEFAULT_PROMPT_TEMPLATE
from processor.config.licenses import LicenseUse
from processor.manifest import ControlKindName


@dataclass
class DecodedImage:
    """A validated sRGB image, EXIF orientation applied."""

    image: Image.Image
    #: The sniffed container format: JPEG, PNG, WEBP, HEIF, GIF, ...
    format: str
    #: Size of the source as stored (before any orientation change).
    source_width: int
    source_height: int
    #: What decode changed: "exif-rotated 90", "converted CMYK to RGB", "first of 12 frames", ...
    notes: list[str] = field(default_factory=list)
    #: The embedded ICC profile's description (the pixels were converted from it to sRGB), or None.
    color_profile: str | None = None


@dataclass(frozen=True)
class ControlUse:
    """One ControlNet or T2I-Adapter that steered a variant, and the conditioning image it was given."""

    type: str
    model: str
    #: The hub commit loaded, or None for a local folder.
    revision: str | None
    scale: float
    guidance_end: float
    #: The image made from the input photo (one per input and style; written as ``control-<type>.png``).
    image: Image.Image
    #: The map's own settings (canny: low, high thresholds).
    settings: dict[str, Any] = field(default_factory=dict)
    #: The preprocessor that made the map (lineart, softedge, depth), as configured; None for canny.
    preprocessor: str | None = None
    #: Its hub commit (None: a local file or folder), and whether its weights were converted from a pickle.
    preprocessor_revision: str | None = None
    preprocessor_converted: bool = False
    #: ``controlnet`` or ``t2i-adapter`` (``processor.models.loader.ControlKind``'s values).
    kind: ControlKindName = "controlnet"


@dataclass(frozen=True)
class ClipSource:
    """The picture a clip was animated from: the photo, or a variant of a still style (``image_from``)."""

    kind: Literal["photo", "variant"] = "photo"
    style: str | None = None
    index: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class VideoFrames:
    """A clip (``engine: animate``): its frames, the rate they play at, and what it was animated from."""

    frames: list[Image.Image]
    fps: int
    source: ClipSource = ClipSource()

    @property
    def duration_s(self) -> float:
        return round(len(self.frames) / self.fps, 4)


@dataclass
class VariantImage:
    """One output of one style for one input: a picture, or a clip (``video``; ``image`` is then
    its first frame, which the scores and the contact sheet read)."""

    style: str
    engine: str
    index: int
    seed: int
    image: Image.Image
    #: Engine parameters used for this variant (recorded in the manifest and the PNG text chunk).
    parameters: dict[str, Any] = field(default_factory=dict)
    #: What the background stage did (mode, prompt, model, seed, coverage, fallback); None: no stage.
    background: dict[str, Any] | None = None
    #: The input's subject mask (``processor.pipeline.mask.SubjectMask``) when a background stage ran.
    mask: Any = None
    #: The ControlNets / T2I-Adapters that steered this variant (``styles.<name>.control``), in config order.
    control: list[ControlUse] = field(default_factory=list)
    #: Edge agreement with the photo (``processor.pipeline.structure.StructureScore``), set before encoding.
    structure: Any = None
    #: CLIP image similarity to the photo (``processor.pipeline.clipscore.ClipScore``) when
    #: ``pipeline.clip_score`` is set; set before encoding.
    clip: Any = None
    #: The models that made it and their declared licences (set by ``render``).
    licenses: list[LicenseUse] = field(default_factory=list)
    #: The clip, for an ``engine: animate`` variant (written as MP4 and an animated WebP preview).
    video: VideoFrames | None = None


@dataclass
class ItemContext:
    """What the stages before the transform learned about one input, for engines that build a
    prompt (``processor.pipeline.prompt``). Engines without a prompt ignore it."""

    #: The caption kept for the prompt (``caption.keep`` applied), or None without captioning.
    caption: str | None = None
    #: A per-image prompt that replaces the caption: a sidecar's ``prompt`` or ``x-amz-meta-prompt``.
    prompt: str | None = None
    #: Where ``prompt`` came from: ``sidecar`` or ``metadata``.
    prompt_source: str | None = None
    #: Terms for the negative prompt (``caption.mode: negative``).
    negative_terms: str | None = None
    #: ``caption.template``.
    template: str = DEFAULT_PROMPT_TEMPLATE
    #: Called with ``stage=`` and optionally ``round=``, ``rounds=``, ``step=``, ``steps=`` as the
    #: transform goes (the worker publishes it in the item's claim). Must be cheap: no I/O.
    report: Callable[..., None] | None = None
    #: The input's own style picture (``processor.pipeline.look.InputStyleImage``): an IP-Adapter
    #: style uses it instead of its ``style_image`` for this input. None: the style's own.
    style_image: Any = None
    #: The variants this input's styles made so far, by style (``render`` fills it in the order the
    #: styles run): an animate style with ``image_from`` starts from its still style's here.
    made: dict[str, list[VariantImage]] = field(default_factory=dict)

    def progress(self, stage: str, **counts: int) -> None:
        if self.report is not None:
            self.report(stage=stage, **counts)


class Engine(Protocol):
    """One configured style. ``style_name`` is its key under ``styles``."""

    style_name: str
    engine: str

    def setup(self) -> None:
        """Load weights or build tables; called once per worker before the first item."""
        ...

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        """All variants of this style for one decoded RGB image."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model ids / availability, for ``processor doctor``."""
        ...

"""The ``pipeline`` section of the settings tree: decoding limits, the subject mask and its
segmenters, the CLIP score, clip bounds, and what every output shares (contact sheet, PNG)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from processor.config.base import (
    DEFAULT_CONTACT_SHEET_MAX_PIXELS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    DEFAULT_MP4_CRF,
    DEFAULT_PNG_COMPRESS_LEVEL,
    DEFAULT_VIDEO_MAX_DECODE_CHUNK,
    DEFAULT_VIDEO_MAX_FRAMES,
    DEFAULT_VIDEO_MAX_SIZE,
    MAX_FRAMES,
    Section,
)

#: CPU seconds any decode that runs isolated may spend whatever the picture's size: its header,
#: frame walk and set-up. A 12 MP HEIC decodes in about half a second of CPU here.
DEFAULT_DECODE_CPU_FLOOR_S = 2.0
#: CPU seconds per megapixel (of the size the header declares) on top of the floor. Normal photos
#: need well under a tenth of this; a progressive JPEG of tens of thousands of scans needs minutes.
DEFAULT_DECODE_CPU_S_PER_MEGAPIXEL = 2.0


class DecodeSettings(Section):
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    min_side: int = Field(default=DEFAULT_MIN_SIDE, ge=1)
    #: The decode budget of a file decoded isolated (one whose structure can be slow: many scans,
    #: chunks, frames or IFDs; GIF, TIFF, HEIF, AVIF): ``cpu_floor_s`` plus ``cpu_s_per_megapixel``
    #: per declared megapixel, in CPU seconds. A decode past it is stopped (``DecodeBudgetExceeded``).
    cpu_floor_s: float = Field(default=DEFAULT_DECODE_CPU_FLOOR_S, gt=0)
    cpu_s_per_megapixel: float = Field(default=DEFAULT_DECODE_CPU_S_PER_MEGAPIXEL, ge=0)


#: Fraction of the image: a subject mask covering less than this is "nothing found".
DEFAULT_MIN_COVERAGE = 0.02
#: Fraction of the image: a subject mask covering more than this is "everything is subject".
DEFAULT_MAX_COVERAGE = 0.90


#: The ONNX segmenter families (``processor.pipeline.onnx_segmenter.FAMILIES``).
OnnxFamily = Literal["u2net", "isnet", "birefnet"]
#: ONNX segmenters known by name, each with its family: their files are pinned by hash and fetched
#: into the model cache without the Hub (``processor.models.segmenters.PINNED_SEGMENTERS``).
KNOWN_ONNX_SEGMENTERS: dict[str, OnnxFamily] = {"u2netp": "u2net"}
#: The default subject segmenter: U^2-Net small, rembg's ``u2netp.onnx`` (4.5 MB, Apache-2.0).
DEFAULT_ONNX_SEGMENTER = "u2netp"


class OnnxSegmenterSettings(Section):
    """A salient-object / matting model in ONNX form (``processor.pipeline.onnx_segmenter``).

    ONNX files hold a graph and tensors, no pickle, so they keep the safe-weights rule."""

    #: ``u2netp`` (a segmenter known by name, pinned by hash), a local ``.onnx`` file, or a hub repo
    #: id whose ``file`` is fetched by ``processor models pull``.
    model: str = DEFAULT_ONNX_SEGMENTER
    #: The file inside the hub repo (ignored for a local file), e.g. ``onnx/model.onnx``.
    file: str = "model.onnx"
    revision: str | None = None
    #: Input size and normalisation: ``u2net`` (rembg u2net/u2netp/silueta, 320 px), ``isnet``
    #: (isnet-general-use, RMBG-1.4-style, 1024 px), ``birefnet`` (1024 px, logits).
    family: OnnxFamily = "u2net"
    #: Pixels: the model's square input side (default: the family's).
    input_size: int | None = Field(default=None, ge=32, le=4096)
    #: Saliency (0-1) at or above which a pixel is subject.
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: ``auto``: the CUDA execution provider when onnxruntime has it, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _onnx_file(self) -> OnnxSegmenterSettings:
        known = KNOWN_ONNX_SEGMENTERS.get(self.model)
        if known is not None:
            if self.family != known:
                raise ValueError(f"onnx segmenter {self.model!r} is of the {known!r} family, not {self.family!r} "
                                 f"(remove pipeline.mask.onnx.family)")
            return self
        target = self.model if self.model.endswith(".onnx") else self.file
        if not target.endswith(".onnx"):
            raise ValueError(f"onnx segmenter file {target!r} must be an .onnx file (set pipeline.mask.onnx.file)")
        return self


class MaskSettings(Section):
    """The subject mask background styles use (``processor.pipeline.mask``), one per input."""

    #: An ONNX salient-object model (the rembg family, BiRefNet); by default ``u2netp``. When its
    #: file is present (or can be fetched: online, not ``models.offline``) it makes the masks; when
    #: it is missing, fails its hash or cannot load, GrabCut does, and the reason is recorded in
    #: every variant's ``background.segmentation.fallback``. ``null``: GrabCut (OpenCV, seeded from
    #: a border colour model; no weights).
    onnx: OnnxSegmenterSettings | None = OnnxSegmenterSettings(model=DEFAULT_ONNX_SEGMENTER)
    #: A transformers semantic-segmentation model (hub id or local folder, safetensors only) instead
    #: of the ONNX one; every pixel whose label is not in ``background_labels`` is subject.
    segmenter: str | None = None
    segmenter_revision: str | None = None
    #: Labels of the segmenter that count as background (ADE20K scene classes by default; compared
    #: case- and space-insensitively). "person" is not among them: a toy figure may be labelled so.
    background_labels: list[str] = Field(default_factory=lambda: [
        "background", "wall", "floor", "ceiling", "table", "desk", "counter", "countertop", "sky", "road",
        "sidewalk", "grass", "earth", "sand", "field", "water", "sea", "mountain", "tree", "plant", "building",
        "windowpane", "door", "curtain", "rug", "cabinet", "shelf", "bookcase", "book", "bed", "sofa", "chair",
        "armchair", "cushion", "pillow", "painting", "mirror", "lamp", "computer", "screen",
    ])
    #: A mask covering less than this fraction of the image falls back to no background change.
    min_coverage: float = Field(default=DEFAULT_MIN_COVERAGE, ge=0, lt=1)
    #: A mask covering more than this fraction of the image falls back to no background change.
    max_coverage: float = Field(default=DEFAULT_MAX_COVERAGE, gt=0, le=1)
    #: Pixels: the Gaussian sigma of the feathered edge (default: 1% of the image's short side).
    feather_px: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _segmenter_replaces_default_onnx(cls, data: object) -> object:
        """A configured transformers segmenter takes the default ONNX model's place (both given is
        still an error)."""
        if isinstance(data, dict) and data.get("segmenter") and "onnx" not in data:
            return {**data, "onnx": None}
        return data

    @model_validator(mode="after")
    def _bounds_ordered(self) -> MaskSettings:
        if self.onnx is not None and self.segmenter:
            raise ValueError("set pipeline.mask.onnx or pipeline.mask.segmenter, not both")
        if self.min_coverage >= self.max_coverage:
            raise ValueError(f"min_coverage ({self.min_coverage}) must be below max_coverage ({self.max_coverage})")
        return self


class ClipScoreSettings(Section):
    """``pipeline.clip_score``: score every variant by CLIP image similarity to its photo
    (``processor.pipeline.clipscore``): a transformers ``CLIPModel`` folder or hub id, loaded once
    per worker like every other model (safetensors only, pinned revision, offline mode) and fetched
    by ``processor models pull``."""

    #: A hub id (``openai/clip-vit-large-patch14``) or a local folder holding a transformers
    #: ``CLIPModel`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json``).
    model: str
    #: The hub commit, branch or tag to load; the commit loaded is recorded in every variant.
    revision: str | None = None


class VideoSettings(Section):
    """Bounds on the clips of ``engine: animate`` styles, the styles' own settings and an input's
    sidecar alike (a sidecar cannot ask for 10,000 frames), and how the MP4s are encoded."""

    #: Frames one clip may have (a style's ``frames``, its family's default, a sidecar's ``frames``).
    max_frames: int = Field(default=DEFAULT_VIDEO_MAX_FRAMES, ge=2, le=MAX_FRAMES)
    #: Pixels: the longest working side of a clip (a style's ``size``, else its family's native size).
    max_size: int = Field(default=DEFAULT_VIDEO_MAX_SIZE, ge=64, le=4096)
    #: Frames Stable Video Diffusion's VAE may decode at once (a style's ``decode_chunk_size``).
    max_decode_chunk_size: int = Field(default=DEFAULT_VIDEO_MAX_DECODE_CHUNK, ge=1, le=MAX_FRAMES)
    #: x264 constant rate factor of the MP4s: 0 lossless, 18 visually lossless, 23 x264's default, 51 worst.
    crf: int = Field(default=DEFAULT_MP4_CRF, ge=0, le=51)


class PipelineSettings(Section):
    decode: DecodeSettings = DecodeSettings()
    #: Write a contact sheet (the original beside every variant) per input.
    contact_sheet: bool = True
    #: Pixels: the contact sheet's tile height.
    contact_sheet_height: int = Field(default=256, ge=32, le=2048)
    #: Pixels: the most the contact sheet may have; its tiles shrink to fit.
    contact_sheet_max_pixels: int = Field(default=DEFAULT_CONTACT_SHEET_MAX_PIXELS, ge=100_000, le=100_000_000)
    #: zlib level of the variant and mask PNGs (0-9): higher is smaller and slower to write.
    png_compress_level: int = Field(default=DEFAULT_PNG_COMPRESS_LEVEL, ge=0, le=9)
    #: The subject mask for styles with a ``background`` (computed once per input).
    mask: MaskSettings = MaskSettings()
    #: Score every variant by the photo's edges it kept inside the subject mask (weight-free,
    #: ``processor.pipeline.structure``), or over the whole image where no mask is at hand.
    structure_score: bool = True
    #: Compute a subject mask for the score when no background stage made one. Off by default:
    #: a GrabCut mask costs CPU time on the upload thread for every input, which toon-only
    #: workers would otherwise pay; their scores then cover the whole image (``region``).
    structure_mask: bool = False
    #: CLIP image similarity of each variant to its photo (inside the subject's box when a subject
    #: mask is at hand, as the structure score); None: not scored, and no CLIP model loads.
    clip_score: ClipScoreSettings | None = None
    #: Clip bounds and MP4 quality of ``engine: animate`` styles.
    video: VideoSettings = VideoSettings()

"""The subject mask: where the toy stands in the source photo.

Contract: ``SubjectMasker(settings)(image)`` returns a ``SubjectMask`` at the image's own size:
``alpha`` (uint8, 255 = subject, 0 = background, a feathered band between), ``hard`` (bool), the
``coverage`` (fraction of pixels that are subject) and, when the mask is not usable, a
``fallback`` reason; styles then leave the background alone and record the reason.

Segmenters (``pipeline.mask``):

- ``onnx`` (the default: ``u2netp``, the U^2-Net small salient-object model rembg publishes,
  4.5 MB, pinned by sha256 and fetched into the model cache; ``processor.models.segmenters``): an
  ONNX salient-object model (also rembg's u2net / isnet-general-use, BiRefNet;
  ``processor.pipeline.onnx_segmenter``): its saliency map, made exactly as rembg makes it,
  resized to the working size and thresholded. When its file is missing (offline and not in the
  cache), fails its hash or does not load, GrabCut makes the masks, the ``segmenter_fallback``
  event is logged and every mask records why (``Segmentation.fallback``);
- ``onnx: null``: OpenCV GrabCut seeded from the colours along the border
  (``processor.pipeline.grabcut``; no weights);
- ``segmenter``: a transformers semantic-segmentation model: every pixel whose label is not a
  background label is subject.

Every hard mask is then cleaned (specks removed, the largest component kept, its holes filled:
eyes and stickers are part of the toy), scaled to full size and feathered with a Gaussian edge.
Every mask says which segmenter made it (``SubjectMask.segmentation``: kind, model, revision,
sha256, fallback reason), and the manifest records that per variant. ``overlay`` draws a mask over
its photo (background tinted, subject outlined) so a person can see why a background went wrong.

No torch here unless a transformers segmenter is configured.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from processor.config import MaskSettings, OnnxSegmenterSettings
from processor.errors import ConfigError
from processor.pipeline.grabcut import OPEN_FRACTION, grabcut_mask

if TYPE_CHECKING:  # imported when an ONNX segmenter is configured (it needs onnxruntime)
    from processor.pipeline.onnx_segmenter import OnnxSegmenter

log = logging.getLogger("processor.mask")

#: Pixels: the long side masks are made and cleaned at (then scaled back up to the image's size):
#: GrabCut is O(pixels) per iteration, and cleaning a 12-megapixel mask would cost seconds.
WORK_SIDE = 320
#: Fraction of the image's short side: the default feather sigma.
FEATHER_FRACTION = 0.01
#: Masks remembered (per image fingerprint): the styles of the input computing now share one.
CACHE_SIZE = 2
#: RGB of the tint laid over the background in overlays, and its weight (0-1).
OVERLAY_TINT = (20, 40, 120)
OVERLAY_TINT_WEIGHT = 0.55
#: RGB of the subject's outline in overlays.
OVERLAY_OUTLINE = (255, 0, 200)
#: Fraction of the short side: the outline's thickness (at least 2 px).
OUTLINE_FRACTION = 0.006
#: Pixels: the long side of the overlay written beside ``mask.png`` in the outputs (it is for
#: looking at on the job page, not for reuse).
PREVIEW_SIDE = 1024


class SegmenterKind(str, Enum):
    GRABCUT = "grabcut"
    ONNX = "onnx"
    TRANSFORMERS = "transformers"


@dataclass(frozen=True)
class Segmentation:
    """Which segmenter made a mask, from what weights, and why the configured one was not used."""

    kind: SegmenterKind = SegmenterKind.GRABCUT
    model: str | None = None
    #: The file inside a hub repo (ONNX).
    file: str | None = None
    #: The hub commit loaded; None for a local file or folder.
    revision: str | None = None
    #: sha256 of the ONNX file (a local file has no commit to pin it).
    sha256: str | None = None
    #: ONNX: the model family (input size and normalisation) and the execution provider used.
    family: str | None = None
    provider: str | None = None
    #: Set when a model is configured but GrabCut made the mask: why.
    fallback: str | None = None

    def record(self) -> dict[str, Any]:
        """The manifest's ``background.segmentation`` (``None`` fields left out)."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SubjectMask:
    """A subject mask at the source image's size (see the module docstring)."""

    alpha: np.ndarray
    hard: np.ndarray
    coverage: float
    #: ``grabcut`` or ``model:<segmenter>``.
    method: str
    #: Why the background must not be changed (coverage out of bounds), else None.
    fallback: str | None = None
    segmentation: Segmentation = Segmentation()

    @property
    def size(self) -> tuple[int, int]:
        return self.alpha.shape[1], self.alpha.shape[0]

    def image(self) -> Image.Image:
        """The feathered mask as an 8-bit greyscale image (the ``mask.png`` output)."""
        return Image.fromarray(self.alpha, "L")

    def alpha_at(self, size: tuple[int, int]) -> np.ndarray:
        """uint8 alpha at ``size`` (w, h): a variant may be smaller than the source photo."""
        if size == self.size:
            return self.alpha
        return np.asarray(self.image().resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def fit_size(size: tuple[int, int], long_side: int = WORK_SIDE) -> tuple[int, int]:
    """``size`` (w, h) shrunk so its long side is at most ``long_side`` (never enlarged)."""
    w, h = size
    scale = min(1.0, long_side / max(w, h))
    return size if scale >= 1.0 else (max(1, round(w * scale)), max(1, round(h * scale)))


def fit_work(rgb: np.ndarray, long_side: int = WORK_SIDE) -> np.ndarray:
    size = fit_size((rgb.shape[1], rgb.shape[0]), long_side)
    if size == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def clean(hard: np.ndarray) -> np.ndarray:
    """Specks removed, the largest component kept, its holes filled (bool, same size)."""
    h, w = hard.shape
    mask: np.ndarray = hard.astype(np.uint8)
    k = max(1, round(OPEN_FRACTION * min(h, w))) * 2 + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def feather(hard: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 alpha: 255 inside the subject farther than ~3 sigma from its edge, 0 as far outside."""
    alpha: np.ndarray = hard.astype(np.float32)
    if sigma > 0:
        radius = int(np.ceil(3 * sigma))
        alpha = cv2.GaussianBlur(alpha, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REPLICATE)
    return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


def upscale(hard: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A working-size mask at full size (w, h), its edge interpolated rather than blocky."""
    if (hard.shape[1], hard.shape[0]) == size:
        return hard
    return cv2.resize(hard.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5


def overlay(image: Image.Image, hard: np.ndarray) -> Image.Image:
    """``image`` with the background tinted and the subject's outline drawn (``hard``: bool, the
    image's size): what a person looks at to see why a background went wrong."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    tint = np.array(OVERLAY_TINT, np.float32)
    out = rgb.copy()
    out[~hard] = rgb[~hard] * (1 - OVERLAY_TINT_WEIGHT) + tint * OVERLAY_TINT_WEIGHT
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(hard.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(2, round(OUTLINE_FRACTION * min(hard.shape)))
    cv2.drawContours(out, contours, -1, OVERLAY_OUTLINE, thickness)
    return Image.fromarray(out, "RGB")


def preview_overlay(image: Image.Image, mask: SubjectMask, long_side: int = PREVIEW_SIDE) -> Image.Image:
    """``overlay`` of ``mask`` on ``image`` (the photo it was made from), at most ``long_side`` px long."""
    size = fit_size(image.size, long_side)
    shown = image if size == image.size else image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    hard = mask.hard if size == mask.size else mask.alpha_at(size) >= 128
    return overlay(shown, hard)


def fingerprint(image: Image.Image) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + f"{image.size}{image.mode}"


class SubjectMasker:
    """Computes (and briefly remembers) subject masks under one ``MaskSettings``.

    Shared by every style of a worker, so an input's mask is computed once however many styles
    change its background. ``models`` (a ``ModelLoader``) gives the model cache and offline mode
    for hub segmenters; it is required for a transformers segmenter.
    """

    def __init__(self, settings: MaskSettings | None = None, models: Any = None) -> None:
        self.settings = settings or MaskSettings()
        self.models = models
        self._segmenter: Any = None
        self._onnx: OnnxSegmenter | None = None
        self._ready = False
        self.segmentation = Segmentation()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, SubjectMask] = OrderedDict()

    @property
    def method(self) -> str:
        """``grabcut``, ``onnx:<model>`` or ``model:<segmenter>`` (after ``setup``)."""
        kind = self.segmentation.kind
        if kind is SegmenterKind.ONNX:
            return f"onnx:{self.segmentation.model}"
        if kind is SegmenterKind.TRANSFORMERS or (self.settings.segmenter and not self._ready):
            return f"model:{self.settings.segmenter}"
        return "grabcut"

    def setup(self) -> None:
        if self._ready:
            return
        if self.settings.onnx is not None:
            self._setup_onnx(self.settings.onnx)
        elif self.settings.segmenter:
            self._segmenter = SegmenterModel.load(self.settings, self.models)
            self.segmentation = Segmentation(SegmenterKind.TRANSFORMERS, model=self.settings.segmenter,
                                             revision=self.settings.segmenter_revision)
        self._ready = True

    def _setup_onnx(self, onnx: OnnxSegmenterSettings) -> None:
        from processor.config import ModelSettings
        from processor.models.loader import offline_mode
        from processor.pipeline.onnx_segmenter import OnnxSegmenter, SegmenterUnavailable

        offline = self.models.offline if self.models is not None else offline_mode(ModelSettings())
        cache_dir = self.models.cache_dir if self.models is not None else None
        try:
            segmenter = OnnxSegmenter.load(onnx, cache_dir=cache_dir, offline=offline)
        except SegmenterUnavailable as exc:
            # Configured but unusable: GrabCut still gives a usable mask; every variant says why.
            log.warning("segmenter_fallback", extra={"model": onnx.model, "reason": str(exc)})
            self.segmentation = Segmentation(SegmenterKind.GRABCUT, model=onnx.model, file=onnx.file,
                                             revision=onnx.revision, family=onnx.family,
                                             fallback=f"{exc}; GrabCut made the mask")
            return
        self._onnx = segmenter
        self.segmentation = Segmentation(SegmenterKind.ONNX, model=onnx.model,
                                         file=None if segmenter.revision is None else onnx.file,
                                         revision=segmenter.revision, sha256=segmenter.sha256,
                                         family=onnx.family, provider=segmenter.provider)

    def __call__(self, image: Image.Image) -> SubjectMask:
        key = fingerprint(image)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            mask = self.compute(image)
            self._cache[key] = mask
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return mask

    def raw(self, image: Image.Image) -> np.ndarray:
        """The hard mask before cleaning, at a working size (scaled to the image's size after)."""
        if self._onnx is not None:
            # The model sees the whole photo (rembg's resize); its map comes back at the model's own
            # resolution when that is larger than GrabCut's (1024 px for isnet/BiRefNet), keeping its detail.
            size = fit_size(image.size, max(WORK_SIDE, *self._onnx.size))
            return self._onnx(image, size) >= self._onnx.settings.threshold
        work = fit_work(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if self._segmenter is not None:
            return self._segmenter(work)
        return grabcut_mask(work)

    def compute(self, image: Image.Image) -> SubjectMask:
        self.setup()
        w, h = image.size
        hard = upscale(clean(self.raw(image)), (w, h))
        sigma = self.settings.feather_px if self.settings.feather_px is not None else FEATHER_FRACTION * min(w, h)
        alpha = feather(hard, sigma)
        coverage = float(hard.mean())
        s = self.settings
        fallback = None
        if coverage < s.min_coverage:
            fallback = (f"subject mask covers {coverage:.1%} of the image, below pipeline.mask.min_coverage "
                        f"{s.min_coverage:.1%}: no subject found, background left unchanged")
        elif coverage > s.max_coverage:
            fallback = (f"subject mask covers {coverage:.1%} of the image, above pipeline.mask.max_coverage "
                        f"{s.max_coverage:.1%}: no background to change")
        log.info("mask", extra={"method": self.method, "coverage": round(coverage, 4), "fallback": bool(fallback)})
        return SubjectMask(alpha=alpha, hard=hard, coverage=coverage, method=self.method, fallback=fallback,
                           segmentation=self.segmentation)


class SegmenterModel:
    """A transformers semantic-segmentation model (SegFormer, DPT, UperNet, ...) as a subject masker.

    Loaded by ``processor.models.segmenters`` like the diffusion models: safetensors only, no
    remote code, the pinned revision, and nothing from the network in offline mode.
    """

    def __init__(self, processor: Any, model: Any, background_ids: set[int], device: str) -> None:
        self.processor = processor
        self.model = model
        self.background_ids = background_ids
        self.device = device

    @classmethod
    def load(cls, settings: MaskSettings, models: Any) -> SegmenterModel:
        from processor.models.loader import ModelLoader
        from processor.models.segmenters import load_semantic_segmenter

        models = models or ModelLoader()
        loaded = load_semantic_segmenter(settings, models)
        processor, model = loaded.processor, loaded.model
        labels = {int(i): str(label).strip().lower() for i, label in model.config.id2label.items()}
        wanted = {label.strip().lower() for label in settings.background_labels}
        background_ids = {i for i, label in labels.items() if label in wanted}
        if len(background_ids) == len(labels):
            raise ConfigError(f"segmenter {settings.segmenter!r}: every label is in pipeline.mask.background_labels; "
                              f"nothing could be subject")
        device = models.device()
        model.to(device).eval()
        return cls(processor, model, background_ids, device)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.processor(images=Image.fromarray(rgb, "RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        logits = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear",
                                                 align_corners=False)
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        return ~np.isin(labels, list(self.background_ids))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

"""The subject mask: where the toy stands in the source photo.

Contract: ``SubjectMasker(settings)(image)`` returns a ``SubjectMask`` at the image's own size:
``alpha`` (uint8, 255 = subject, 0 = background, a feathered band between), ``hard`` (bool), the
``coverage`` (fraction of pixels that are subject) and, when the mask is not usable, a
``fallback`` reason; styles then leave the background alone and record the reason.

The default segmenter needs no weights (OpenCV GrabCut, seeded rather than from a blind central
rectangle, because toys are rarely centred):

1. work on a copy at most ``WORK_SIDE`` px long (GrabCut is O(pixels) per iteration);
2. learn the background's colours from a band along the top, left and right borders (k-means in
   Lab; clusters holding a small share of the band are dropped, since a subject that touches the
   border must not become "background colour");
3. pixels far from every background colour (judged against the band's own spread) seed "probably
   subject", and so does the convex hull of their largest blob (a white belly looks like a white
   keyboard by colour alone); pixels of the border band that match the background seed "surely
   background", the rest "probably background";
4. GrabCut refines the seeds with its colour models and the image's edges;
5. clean: small specks removed (opening), the largest component kept, its holes filled (eyes and
   stickers are part of the toy), then scaled to full size and feathered with a Gaussian edge.

Optionally (``pipeline.mask.segmenter``) a transformers semantic-segmentation model replaces steps
2-4: every pixel whose label is not a background label is subject; cleaning is the same.

No torch here unless a segmenter model is configured.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from processor.config import MaskSettings
from processor.errors import ConfigError, ModelUnavailableError

log = logging.getLogger("processor.mask")

#: Pixels: the long side GrabCut works at (the mask is scaled back up to the image's size).
WORK_SIDE = 320
#: Fraction of the short side: the border band whose colours define "background".
BORDER_FRACTION = 0.04
#: Colour clusters fitted to the border band.
BORDER_CLUSTERS = 6
#: Fraction of the border band: the largest colour clusters that together hold this much of it are
#: the background; the rest (a toy's ears touching the top edge, a stray object) are not trusted.
TRUSTED_BAND_SHARE = 0.8
#: Lab units: below this distance from a background colour a pixel is never seeded as subject
#: (wood grain and sensor noise stay inside it; about 10 is a clearly visible colour difference).
MIN_SEED_DISTANCE = 14.0
#: Weight of Lab lightness against the two colour axes in the background distance: shadows and
#: light falloff change lightness far more than colour.
LIGHTNESS_WEIGHT = 0.5
#: Percentile of the border band's own distances to its colours: the background's spread.
BORDER_SPREAD_PERCENTILE = 95
#: A pixel farther than this many spreads from every background colour is seeded as subject.
SPREAD_FACTOR = 2.0
#: GrabCut iterations (5 is OpenCV's usual; more rarely changes the result).
GRABCUT_ITERATIONS = 5
#: Fraction of the working short side: the opening that removes specks before the largest component.
OPEN_FRACTION = 0.012
#: Fraction of the image's short side: the default feather sigma.
FEATHER_FRACTION = 0.01
#: Masks remembered (per image fingerprint): the styles of the input computing now share one.
CACHE_SIZE = 2


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


def fit_work(rgb: np.ndarray, long_side: int = WORK_SIDE) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def border_bands(h: int, w: int, band: int, *, bottom: bool) -> np.ndarray:
    edge = np.zeros((h, w), bool)
    edge[:band], edge[:, :band], edge[:, -band:] = True, True, True
    if bottom:
        edge[-band:] = True
    return edge


def border_distance(lab: np.ndarray, band: int, rng_seed: int = 0) -> tuple[np.ndarray, float]:
    """Per-pixel Lab distance to the nearest trusted background colour of the border band, and
    the spread of the trusted band pixels themselves (their ``BORDER_SPREAD_PERCENTILE`` distance)."""
    h, w = lab.shape[:2]
    # Top, left and right only: a toy photographed close is most often cut off by the bottom edge,
    # while the desk it stands on still reaches the side bands.
    samples = lab[border_bands(h, w, band, bottom=False)].reshape(-1, 3).astype(np.float32)
    k = min(BORDER_CLUSTERS, len(samples))
    cv2.setRNGSeed(rng_seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    # bestLabels=None is OpenCV's documented Python usage; its stubs demand an array.
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    share = np.bincount(labels.ravel(), minlength=k) / len(samples)
    order = np.argsort(share)[::-1]
    keep = int(np.searchsorted(np.cumsum(share[order]), TRUSTED_BAND_SHARE)) + 1
    trusted = centres[order[:keep]]
    in_trusted = np.isin(labels.ravel(), order[:keep])
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    weight = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    dist = np.sqrt((((flat - trusted[None, :, :]) * weight) ** 2).sum(axis=2)).min(axis=1).reshape(h, w)
    band_dist = dist[border_bands(h, w, band, bottom=False)]
    return dist, float(np.percentile(band_dist[in_trusted], BORDER_SPREAD_PERCENTILE))


def subject_hull(unlike: np.ndarray) -> np.ndarray | None:
    """The convex hull of the largest blob of background-unlike pixels (bool), or None."""
    h, w = unlike.shape
    k = max(1, round(OPEN_FRACTION * min(h, w))) * 2 + 1
    opened = cv2.morphologyEx(unlike.astype(np.uint8), cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    return hull.astype(bool)


def grabcut_mask(rgb: np.ndarray) -> np.ndarray:
    """Hard subject mask (bool) of a working-size RGB image, before cleaning."""
    h, w = rgb.shape[:2]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    band = max(2, round(BORDER_FRACTION * min(h, w)))
    # "Unlike the background" is judged against the background's own spread (grain, noise, light
    # falloff), never below a fixed noise floor.
    dist, spread = border_distance(lab, band)
    threshold = max(MIN_SEED_DISTANCE, SPREAD_FACTOR * spread)
    unlike = dist > threshold
    seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    # Inside the hull of the clearly-unlike region, even background-coloured pixels start as
    # "probably subject": a toy's white belly or grey feet look like the desk by colour alone, and
    # GrabCut's edge term keeps them attached to the rest of the toy (or hands them back).
    hull = subject_hull(unlike)
    if hull is not None:
        seeds[hull] = cv2.GC_PR_FGD
    seeds[unlike] = cv2.GC_PR_FGD
    seeds[border_bands(h, w, band, bottom=True) & (dist <= threshold)] = cv2.GC_BGD
    if not (seeds == cv2.GC_PR_FGD).any():
        return np.zeros((h, w), bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    # rect=None with GC_INIT_WITH_MASK is OpenCV's documented usage; its stubs demand a rect.
    cv2.grabCut(np.ascontiguousarray(rgb[:, :, ::-1]), seeds, None, bgd, fgd,  # type: ignore[call-overload]
                GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


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


def fingerprint(image: Image.Image) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + f"{image.size}{image.mode}"


class SubjectMasker:
    """Computes (and briefly remembers) subject masks under one ``MaskSettings``.

    Shared by every style of a worker, so an input's mask is computed once however many styles
    change its background. ``models`` (a ``ModelLoader``) is only needed with a segmenter model.
    """

    def __init__(self, settings: MaskSettings | None = None, models: Any = None) -> None:
        self.settings = settings or MaskSettings()
        self.models = models
        self._segmenter: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, SubjectMask] = OrderedDict()

    @property
    def method(self) -> str:
        return f"model:{self.settings.segmenter}" if self.settings.segmenter else "grabcut"

    def setup(self) -> None:
        if self.settings.segmenter and self._segmenter is None:
            self._segmenter = SegmenterModel.load(self.settings, self.models)

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

    def compute(self, image: Image.Image) -> SubjectMask:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        h, w = rgb.shape[:2]
        work = fit_work(rgb)
        if self.settings.segmenter:
            self.setup()
            raw = self._segmenter(work)
        else:
            raw = grabcut_mask(work)
        hard = upscale(clean(raw), (w, h))
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
        return SubjectMask(alpha=alpha, hard=hard, coverage=coverage, method=self.method, fallback=fallback)


class SegmenterModel:
    """A transformers semantic-segmentation model (SegFormer, DPT, UperNet, ...) as a subject masker.

    Loaded like the diffusion models: safetensors only, no remote code, the pinned revision, and
    nothing from the network in offline mode.
    """

    def __init__(self, processor: Any, model: Any, background_ids: set[int], device: str) -> None:
        self.processor = processor
        self.model = model
        self.background_ids = background_ids
        self.device = device

    @classmethod
    def load(cls, settings: MaskSettings, models: Any) -> SegmenterModel:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        from processor.models import PULL_COMMAND, ModelLoader, is_local

        models = models or ModelLoader()
        name = settings.segmenter
        if name is None:
            raise ValueError("SegmenterModel.load needs mask.segmenter set (None means GrabCut, which loads nothing)")
        options: dict[str, Any] = {"revision": settings.segmenter_revision, "cache_dir": models.cache_dir,
                                   "local_files_only": models.offline or is_local(name)}
        try:
            processor = AutoImageProcessor.from_pretrained(name, **options)
            model = AutoModelForSemanticSegmentation.from_pretrained(
                name, use_safetensors=True, trust_remote_code=False, **options)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"segmenter {name!r} (pipeline.mask.segmenter) could not be loaded: {exc} "
                f"(a transformers semantic-segmentation model with safetensors weights is required; "
                f"`{PULL_COMMAND}` fetches it into the model cache)"
            ) from exc
        labels = {int(i): str(label).strip().lower() for i, label in model.config.id2label.items()}
        wanted = {label.strip().lower() for label in settings.background_labels}
        background_ids = {i for i, label in labels.items() if label in wanted}
        if len(background_ids) == len(labels):
            raise ConfigError(f"segmenter {name!r}: every label is in pipeline.mask.background_labels; "
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


#: Files fetched for a segmenter given as a hub id (weights as safetensors, configs, vocabularies).
SEGMENTER_PATTERNS = ["*.safetensors", "*.json", "*.txt"]


def pull_segmenter(settings: MaskSettings, cache_dir: str | None) -> str | None:
    """Download ``settings.segmenter`` (a hub id) into the cache for ``processor models pull``;
    returns the snapshot folder, or None when there is nothing to fetch."""
    from huggingface_hub import snapshot_download

    from processor.models import is_local

    if not settings.segmenter or is_local(settings.segmenter):
        return None
    try:
        return snapshot_download(settings.segmenter, revision=settings.segmenter_revision, cache_dir=cache_dir,
                                 allow_patterns=SEGMENTER_PATTERNS)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"segmenter {settings.segmenter!r} could not be fetched: {exc}") from exc


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

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
   background", the rest "probably background" (``grabcut_mask`` says how a support surface, a
   hand and textured backgrounds are handled);
4. GrabCut refines the seeds with its colour models and the image's edges;
5. clean: small specks removed (opening), the largest component kept, its holes filled (eyes and
   stickers are part of the toy), then scaled to full size and feathered with a Gaussian edge.

Optionally a model replaces steps 2-4; cleaning is the same:

- ``pipeline.mask.onnx``: an ONNX salient-object model (rembg's u2net / isnet-general-use,
  BiRefNet; ``processor.pipeline.onnx_segmenter``): its saliency map at the model's resolution,
  thresholded. When configured and present it is the default; when its file is missing or does
  not load, GrabCut makes the masks and the reason is recorded (``Segmentation.fallback``).
- ``pipeline.mask.segmenter``: a transformers semantic-segmentation model: every pixel whose label
  is not a background label is subject.

Every mask says which segmenter made it (``SubjectMask.segmentation``: kind, model, revision,
fallback reason), and the manifest records that per variant.

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

if TYPE_CHECKING:  # imported when an ONNX segmenter is configured (it needs onnxruntime)
    from processor.pipeline.onnx_segmenter import OnnxSegmenter

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
#: Stretches of the top/left/right border band (``border_segments``).
BORDER_SEGMENTS = 16
#: A border colour present in this many stretches is background whatever its share of the band.
RECURRING_SEGMENTS = 10
#: Fraction of a stretch's pixels a colour must hold there to count as present.
SEGMENT_PRESENCE = 0.05
#: Pixels (odd): the median filter taken before colour distances (fabric grain, carpet, noise).
TEXTURE_SMOOTH = 5
#: Fraction of the height: disagreeing rows allowed inside the support surface's run of rows.
SUPPORT_GAP_FRACTION = 0.03
#: Fraction of the bottom band that must match the surface's colours for it to count.
SUPPORT_BOTTOM_SHARE = 0.35
#: YCrCb skin range (Y floor, Cr and Cb bounds): a hand holding the toy.
SKIN_MIN_Y = 40
SKIN_CR = (136, 176)
SKIN_CB = (80, 132)
#: A skin-coloured region larger than this share of the subject candidates is the toy itself.
HAND_MAX_SHARE = 0.6
#: Share of the other candidates inside a skin region's convex hull above which it is the toy.
HAND_ENCLOSED_SHARE = 0.5
#: Weighted Lab distance from the arm's colour (where it crosses the edge) still counted as hand.
HAND_COLOUR_DISTANCE = 12.0
#: Pixels: the least crossing of the frame's edge that counts as an arm entering.
HAND_MIN_CROSSING = 6
#: Pixels (working size): how close to the frame's edge a hand's region must reach.
HAND_EDGE_PX = 2
#: GrabCut iterations (5 is OpenCV's usual; more rarely changes the result).
GRABCUT_ITERATIONS = 5
#: Fraction of the working short side: the opening that removes specks before the largest component.
OPEN_FRACTION = 0.012
#: Fraction of the image's short side: the default feather sigma.
FEATHER_FRACTION = 0.01
#: Masks remembered (per image fingerprint): the styles of the input computing now share one.
CACHE_SIZE = 2


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


def border_segments(h: int, w: int, band: int) -> np.ndarray:
    """int map: which stretch of the top/left/right border band a pixel is in (-1 outside): the
    top band is cut along x, each side band along y, ``BORDER_SEGMENTS`` stretches in all."""
    seg = np.full((h, w), -1, np.int32)
    top_n = BORDER_SEGMENTS // 3 + BORDER_SEGMENTS % 3
    side_n = BORDER_SEGMENTS // 3
    xs = np.minimum(np.arange(w) * top_n // max(w, 1), top_n - 1)
    ys = np.minimum(np.arange(h) * side_n // max(h, 1), side_n - 1)
    seg[:, :band] = top_n + ys[:, None]
    seg[:, -band:] = top_n + side_n + ys[:, None]
    seg[:band] = xs[None, :]
    return seg


def lab_distance(lab: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Per-pixel weighted Lab distance to the nearest of ``colours`` (k x 3)."""
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    weight = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    d = np.sqrt((((flat - colours[None, :, :].astype(np.float32)) * weight) ** 2).sum(axis=2)).min(axis=1)
    return d.reshape(lab.shape[:2])


def border_distance(lab: np.ndarray, band: int, rng_seed: int = 0) -> tuple[np.ndarray, float]:
    """Per-pixel Lab distance to the nearest trusted background colour of the border band, and
    the spread of the trusted band pixels themselves (their ``BORDER_SPREAD_PERCENTILE`` distance)."""
    h, w = lab.shape[:2]
    # Top, left and right only: a toy photographed close is most often cut off by the bottom edge,
    # while the desk it stands on still reaches the side bands (and ``support_distance`` models it).
    in_band = border_bands(h, w, band, bottom=False)
    samples = lab[in_band].reshape(-1, 3).astype(np.float32)
    k = min(BORDER_CLUSTERS, len(samples))
    cv2.setRNGSeed(rng_seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    # OpenCV allocates the labels when bestLabels is None; its stubs require an array.
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    labels = labels.ravel()
    share = np.bincount(labels, minlength=k) / len(samples)
    order = np.argsort(share)[::-1]
    keep = int(np.searchsorted(np.cumsum(share[order]), TRUSTED_BAND_SHARE)) + 1
    trusted = set(order[:keep].tolist())
    # Patterned backgrounds (a blanket's flowers, checks, stripes): a colour that recurs all around
    # the frame is background even when it holds a small share of the band, while a subject that
    # touches the border occupies one stretch of it.
    segments = border_segments(h, w, band)[in_band]
    sizes = np.maximum(np.bincount(segments, minlength=BORDER_SEGMENTS), 1)
    for cluster in range(k):
        counts = np.bincount(segments[labels == cluster], minlength=BORDER_SEGMENTS)
        if int(((counts / sizes) >= SEGMENT_PRESENCE).sum()) >= RECURRING_SEGMENTS:
            trusted.add(cluster)
    chosen = sorted(trusted)
    dist = lab_distance(lab, centres[chosen])
    in_trusted = np.isin(labels, chosen)
    return dist, float(np.percentile(dist[in_band][in_trusted], BORDER_SPREAD_PERCENTILE))


def support_distance(lab: np.ndarray, band: int, threshold: float) -> np.ndarray | None:
    """Distance to the support surface (floor, desk, shelf) per pixel, or None when there is none.

    A surface the toy stands on meets the bottom edge and spans the frame: row by row, the left
    and right border bands show the same colour. The rows where they agree, in one run up from the
    bottom edge (a few disagreeing rows are allowed: a shelf's lip, a blurred horizon), form the
    surface's colour band, each row with its own colours (light falls off towards the camera, a
    shelf is board, lip and shadow). A mat narrower than the frame reaches neither side band and
    is not modelled. The surface's colours are not trusted unless at least
    ``SUPPORT_BOTTOM_SHARE`` of the bottom band matches them: a big toy touching both sides and
    the bottom edge must not become "surface"."""
    h = lab.shape[0]
    left = np.median(lab[:, :band], axis=1)
    right = np.median(lab[:, -band:], axis=1)
    weight = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    agree = np.sqrt((((left - right) * weight) ** 2).sum(axis=1)) <= threshold
    rows = np.zeros(h, bool)
    gap = 0
    for y in range(h - 1, -1, -1):
        if agree[y]:
            rows[y], gap = True, 0
        else:
            gap += 1
            if gap > max(2, round(SUPPORT_GAP_FRACTION * h)):
                break
    if not rows[h - band:].any():
        return None
    both = np.stack([left, right], axis=1)  # h x 2 x 3
    diff = (lab[:, :, None, :] - both[:, None, :, :]) * weight
    dist = np.sqrt((diff ** 2).sum(axis=3)).min(axis=2)
    dist[~rows] = np.inf
    bottom = dist[h - band:]
    if (bottom <= threshold).mean() < SUPPORT_BOTTOM_SHARE:
        return None
    return dist


def hand_region(rgb: np.ndarray, lab: np.ndarray, unlike: np.ndarray) -> np.ndarray:
    """Skin-coloured parts of the subject candidates that enter from the left, right or bottom
    edge: a hand or arm holding the toy (bool).

    An arm runs out of the frame, so its colour is learnt where it crosses the edge (the median
    of each skin-coloured candidate region's pixels on the outermost ``HAND_EDGE_PX``), and the
    hand is what is connected to that crossing within ``HAND_COLOUR_DISTANCE`` of that colour: a
    toy's beige belly under the fingers is skin-like to a fixed range, not to the arm's own
    colour. Empty when that would take more than ``HAND_MAX_SHARE`` of what stands out, or when
    the region wraps the rest (a brown toy cut off by the bottom edge is skin-coloured too: then
    nothing is taken away)."""
    h, w = unlike.shape
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    y, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
    skin = (y >= SKIN_MIN_Y) & (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1]) & (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1])
    candidates = skin & unlike
    _, labels = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    edge = np.zeros((h, w), bool)
    edge[:, :HAND_EDGE_PX], edge[:, -HAND_EDGE_PX:], edge[-HAND_EDGE_PX:] = True, True, True
    hand = np.zeros((h, w), bool)
    weight = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    for label in np.unique(labels[edge & (labels > 0)]):
        region = labels == label
        crossing = region & edge
        if crossing.sum() < HAND_MIN_CROSSING:
            continue
        colour = np.median(lab[crossing], axis=0)
        near = region & (np.sqrt((((lab - colour) * weight) ** 2).sum(axis=2)) <= HAND_COLOUR_DISTANCE)
        _, grown = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
        hand |= np.isin(grown, np.unique(grown[near & edge]))
    total = int(unlike.sum())
    if not hand.any() or total == 0 or hand.sum() > HAND_MAX_SHARE * total:
        return np.zeros((h, w), bool)
    # A hand holds the toy from one side; a skin-coloured toy's body wraps its own belly, muzzle
    # and feet: when most of the rest lies inside the "hand"'s convex hull, it is the toy.
    rest = unlike & ~hand
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero(hand.astype(np.uint8))), 1)
    if (rest & hull.astype(bool)).sum() > HAND_ENCLOSED_SHARE * max(1, int(rest.sum())):
        return np.zeros((h, w), bool)
    # The blurred rim between hand and toy is neither colour: one pixel more is hand.
    return cv2.dilate(hand.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


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
    """Hard subject mask (bool) of a working-size RGB image, before cleaning.

    How the common real-photo scenes are handled:

    - support surface (floor, desk, shelf) meeting the bottom edge: ``support_distance`` models
      its colour band row by row from the side bands, so it is background, not subject; the
      bottom border is "surely background" only where it matches the surface, never where the
      subject continues into it (a toy cut off by the bottom edge);
    - a hand entering from an edge: ``hand_region`` takes skin-coloured candidates touching the
      left, right or bottom edge out of the seeds and makes them surely background;
    - textured and patterned backgrounds (sofa fabric, carpet, a blanket): colour distances are
      taken on a median-filtered copy, so grain averages out, and a colour that recurs all around
      the border is background however small its share (``border_distance``).
    """
    h, w = rgb.shape[:2]
    smooth = cv2.medianBlur(rgb, TEXTURE_SMOOTH) if min(h, w) > 4 * TEXTURE_SMOOTH else rgb
    lab = cv2.cvtColor(smooth, cv2.COLOR_RGB2LAB).astype(np.float32)
    band = max(2, round(BORDER_FRACTION * min(h, w)))
    # "Unlike the background" is judged against the background's own spread (grain, noise, light
    # falloff), never below a fixed noise floor.
    dist, spread = border_distance(lab, band)
    threshold = max(MIN_SEED_DISTANCE, SPREAD_FACTOR * spread)
    support = support_distance(lab, band, threshold)
    if support is not None:
        dist = np.minimum(dist, support)
    unlike = dist > threshold
    hand = hand_region(smooth, lab, unlike)
    unlike &= ~hand
    seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    # Inside the hull of the clearly-unlike region, even background-coloured pixels start as
    # "probably subject": a toy's white belly or grey feet look like the desk by colour alone, and
    # GrabCut's edge term keeps them attached to the rest of the toy (or hands them back).
    hull = subject_hull(unlike)
    if hull is not None:
        seeds[hull] = cv2.GC_PR_FGD
    seeds[unlike] = cv2.GC_PR_FGD
    seeds[border_bands(h, w, band, bottom=True) & (dist <= threshold)] = cv2.GC_BGD
    seeds[hand] = cv2.GC_BGD
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

    def raw(self, rgb: np.ndarray) -> np.ndarray:
        """The hard mask before cleaning, at a working size (scaled to the image's size after)."""
        if self._onnx is not None:
            # At the model's own resolution (1024 px for isnet/BiRefNet), not GrabCut's: the edge
            # keeps the model's detail, while cleaning a 12-megapixel mask would cost seconds.
            detail = fit_work(rgb, max(WORK_SIDE, *self._onnx.size))
            return self._onnx(detail) >= self._onnx.settings.threshold
        work = fit_work(rgb)
        if self._segmenter is not None:
            return self._segmenter(work)
        return grabcut_mask(work)

    def compute(self, image: Image.Image) -> SubjectMask:
        self.setup()
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        h, w = rgb.shape[:2]
        hard = upscale(clean(self.raw(rgb)), (w, h))
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

"""The ``toon`` engine: a classical OpenCV cartoon effect, CPU only, no weights.

Per variant: downscale (never upscale) so the long side is at most ``max_side``; smooth with
repeated bilateral filtering (flattens texture, keeps outlines); quantise colours with a seeded
k-means in CIE Lab (perceptually even clusters); draw bold dark lines from an adaptive threshold of
the median-blurred grey image plus the borders between clearly different flat colours; paint the
lines over the flat colours.

Every step is single-pass per pixel or seeded, so results do not depend on OpenCV's thread count
(checked: identical bytes with 0, 1, 2 and 8 threads).

Variant ``i`` uses seed ``style.seed + i``, and its seed alone decides its look, so the same input
and style always give the same pixels, and variant 1 of seed 0 is variant 0 of seed 1. The seed
draws the colour count and smoothing passes from the style's inclusive ranges and seeds the
k-means; it picks the rest in turns, so that neighbouring seeds (a style's variants) differ on
purpose rather than by chance: the palette treatment (``Palette``: one of five, in
``PALETTE_ORDER``), the tone levels the palette's lightness is snapped to (``TONE_LEVELS``: free,
four or three, a poster or cel look) and the line weight (the ``edge_width`` range, thinnest to
boldest). Every one of them is recorded in the variant's parameters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any

import cv2
import numpy as np
from PIL import Image

from processor.config import ToonStyle
from processor.pipeline.base import ItemContext, VariantImage

ENGINE = "toon"

# --- smoothing -------------------------------------------------------------------------------
#: Pixels: bilateral filter neighbourhood diameter.
BILATERAL_DIAMETER = 9
#: Intensity units (0-255): colour differences below this are smoothed over; above it, kept as edges.
BILATERAL_SIGMA_COLOR = 30.0
#: Pixels: spatial reach of one bilateral pass.
BILATERAL_SIGMA_SPACE = 7.0

# --- colour quantisation ---------------------------------------------------------------------
#: Lloyd iterations at most; the palette usually settles well before.
KMEANS_MAX_ITER = 20
#: Lab units: stop once no centre moves further than this.
KMEANS_TOLERANCE = 0.1
#: Bits per RGB channel of the colour histogram / lookup table (8-level bins: finer than any
#: cartoon palette step).
LUT_BITS = 5
LUT_CELLS = 1 << (3 * LUT_BITS)
#: Pixels: median kernel that removes single-pixel speckles left by quantisation.
SPECKLE_KERNEL = 5


class Palette(str, Enum):
    """What a variant does to its k-means palette's colours (``PALETTE_LOOKS``)."""

    NATURAL = "natural"
    VIVID = "vivid"
    PASTEL = "pastel"
    WARM = "warm"
    COOL = "cool"


@dataclass(frozen=True)
class PaletteLook:
    #: Factor on HSV saturation (cartoons are a little more vivid than photos: natural is 1.15).
    saturation: float
    #: Fraction of the way each colour moves toward white (0: none).
    lift: float
    #: Gains on R, G and B (a warm or cool cast).
    tint: tuple[float, float, float]


PALETTE_LOOKS = {
    Palette.NATURAL: PaletteLook(1.15, 0.0, (1.0, 1.0, 1.0)),
    Palette.VIVID: PaletteLook(1.7, 0.0, (1.0, 1.0, 1.0)),
    Palette.PASTEL: PaletteLook(0.6, 0.25, (1.0, 1.0, 1.0)),
    Palette.WARM: PaletteLook(1.25, 0.0, (1.1, 1.0, 0.82)),
    Palette.COOL: PaletteLook(1.1, 0.0, (0.84, 1.0, 1.1)),
}
#: Palette of seed ``s``: ``PALETTE_ORDER[s % 5]``; vivid and pastel, the furthest apart, neighbour natural.
PALETTE_ORDER = (Palette.NATURAL, Palette.VIVID, Palette.PASTEL, Palette.WARM, Palette.COOL)
#: Lightness levels the palette is snapped to, for seed ``s``: ``TONE_LEVELS[s % 3]`` (0: as clustered).
TONE_LEVELS = (0, 4, 3)
#: Lab lightness (0-100) of the darkest and the lightest snapped tone.
TONE_DARKEST, TONE_LIGHTEST = 25.0, 90.0

# --- lines -----------------------------------------------------------------------------------
#: Pixels: median blur of the grey image before thresholding (suppresses texture lines).
EDGE_MEDIAN_KERNEL = 7
#: Working-image long sides per adaptive-threshold block; the block scales with the image.
EDGE_BLOCK_FRACTION = 1 / 90
#: Pixels: the smallest adaptive-threshold block (odd).
EDGE_BLOCK_MIN = 7
#: Intensity units (0-255): a pixel must be this much darker than its block's mean to be a line.
EDGE_THRESHOLD_C = 10.0
#: Connected line fragments smaller than this fraction of the image are dropped as noise.
EDGE_MIN_AREA_FRACTION = 1.5e-4
#: Lab distance between neighbouring flat colours that earns an outline (about 2.3 is "just
#: noticeable"; shades of one material stay below this).
OUTLINE_DELTA_E = 25.0
#: RGB of the drawn lines.
EDGE_COLOR = (24, 20, 20)


class ToonEngine:
    """One configured ``toon`` style; see the module docstring for the effect."""

    engine = ENGINE

    def __init__(self, style_name: str, style: ToonStyle) -> None:
        self.style_name = style_name
        self.style = style

    def setup(self) -> None:
        """No weights; builds the colour lookup table so the first item does not pay for it."""
        _grid_lab()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": ENGINE,
            "style": self.style_name,
            "available": True,
            "model": None,
            "opencv": cv2.__version__,
            "variants": self.style.variants,
            "seed": self.style.seed,
            "max_side": self.style.max_side,
            "colors": list(self.style.colors),
            "smoothing": list(self.style.smoothing),
            "edge_width": list(self.style.edge_width),
        }

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        """``style.variants`` cartoons of ``image``, each at the working size."""
        if image.mode != "RGB":
            # Decode hands us RGB; converting here keeps direct callers (tests, notebooks) simple.
            image = image.convert("RGB")
        working = fit_long_side(image, self.style.max_side)
        rgb = np.asarray(working, dtype=np.uint8)
        width, height = working.size
        results = []
        for index in range(self.style.variants):
            seed = self.style.seed + index
            # Drawn values first, then the descriptive fields the manifest records beside them.
            params: dict[str, Any] = draw_parameters(self.style, seed)
            out = cartoonize(
                rgb,
                colors=params["colors"],
                smoothing=params["smoothing"],
                edge_width=params["edge_width"],
                seed=seed,
                palette=Palette(params["palette"]),
                tones=params["tones"],
            )
            params.update(
                {
                    "engine": ENGINE,
                    "style": self.style_name,
                    "seed": seed,
                    "max_side": self.style.max_side,
                    "working_size": f"{width}x{height}",
                }
            )
            results.append(
                VariantImage(
                    style=self.style_name,
                    engine=ENGINE,
                    index=index,
                    seed=seed,
                    image=Image.fromarray(out, "RGB"),
                    parameters=params,
                )
            )
        return results


def draw_parameters(style: ToonStyle, seed: int) -> dict[str, Any]:
    """The variant's look from ``seed`` alone (module docstring): colour count and smoothing passes
    drawn (inclusive) from the style's ranges; palette, tone levels and line width in turns."""
    rng = np.random.default_rng(seed)
    thinnest, boldest = style.edge_width
    return {
        "colors": int(rng.integers(style.colors[0], style.colors[1], endpoint=True)),
        "smoothing": int(rng.integers(style.smoothing[0], style.smoothing[1], endpoint=True)),
        "edge_width": thinnest + seed % (boldest - thinnest + 1),
        "palette": PALETTE_ORDER[seed % len(PALETTE_ORDER)].value,
        "tones": TONE_LEVELS[seed % len(TONE_LEVELS)],
    }


def fit_long_side(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` scaled so its long side is at most ``max_side``, aspect kept; never upscaled."""
    width, height = image.size
    long_side = max(width, height)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def cartoonize(rgb: np.ndarray, *, colors: int, smoothing: int, edge_width: int, seed: int,
               palette: Palette = Palette.NATURAL, tones: int = 0) -> np.ndarray:
    """The cartoon of an HxWx3 uint8 RGB array (same shape); deterministic for equal arguments."""
    smooth = rgb
    for _ in range(smoothing):
        smooth = cv2.bilateralFilter(smooth, BILATERAL_DIAMETER, BILATERAL_SIGMA_COLOR, BILATERAL_SIGMA_SPACE)
    flat = quantize(smooth, colors, np.random.default_rng(seed), palette=palette, tones=tones)
    lines = edge_mask(smooth, flat, edge_width)
    return paint_lines(flat, lines)


def quantize(rgb: np.ndarray, colors: int, rng: np.random.Generator, *, palette: Palette = Palette.NATURAL,
             tones: int = 0) -> np.ndarray:
    """``rgb`` reduced to ``colors`` flat colours chosen by k-means in Lab, their lightness snapped
    to ``tones`` levels (0: kept), then treated as ``palette`` says."""
    pixels = rgb.reshape(-1, 3)
    # Fit on the colour histogram (32**3 cells, weighted by pixel count) rather than on pixels: every
    # pixel counts, yet a photo occupies only a few thousand cells, so k-means stays cheap.
    cell = _lut_cell(pixels)
    counts = np.bincount(cell, minlength=LUT_CELLS)
    used = np.flatnonzero(counts)
    points = _grid_lab()[used]
    centres = _kmeans(points, counts[used].astype(np.float64), colors, rng)
    lut = np.zeros(LUT_CELLS, dtype=np.intp)
    lut[used] = _nearest(points, centres)
    flat = _palette_rgb(_snap_tones(centres, tones), PALETTE_LOOKS[palette])[lut[cell]].reshape(rgb.shape)
    # Quantising a gradient leaves isolated pixels on cluster borders; a small median cleans them.
    return cv2.medianBlur(flat, SPECKLE_KERNEL)


def edge_mask(smooth: np.ndarray, flat: np.ndarray, edge_width: int) -> np.ndarray:
    """A uint8 mask (255 = line), ``edge_width`` pixels thick: dark details of ``smooth`` (adaptive
    threshold of its median-blurred grey) plus borders between clearly different colours of ``flat``.
    """
    height, width = smooth.shape[:2]
    grey = cv2.medianBlur(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), EDGE_MEDIAN_KERNEL)
    block = max(EDGE_BLOCK_MIN, int(max(height, width) * EDGE_BLOCK_FRACTION) | 1)
    lines = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, EDGE_THRESHOLD_C
    )
    # Texture (fur, wood grain) survives as short specks; real outlines are long connected runs.
    _, labels, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    min_area = max(2, int(EDGE_MIN_AREA_FRACTION * height * width))
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    lines = np.where(keep[labels], 255, 0).astype(np.uint8)
    # A red toy on a grey wall can have the same grey level as the wall: outline colour borders too.
    lines = lines | colour_borders(flat)
    if edge_width > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (edge_width, edge_width))
        lines = cv2.dilate(lines, kernel)
    return lines


def colour_borders(flat: np.ndarray) -> np.ndarray:
    """A uint8 mask (255 = border) one pixel wide where neighbouring colours differ by more than
    ``OUTLINE_DELTA_E`` (Lab distance)."""
    lab = cv2.cvtColor(flat.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    limit = OUTLINE_DELTA_E**2
    border = np.zeros(flat.shape[:2], dtype=bool)
    border[:, :-1] |= ((lab[:, 1:] - lab[:, :-1]) ** 2).sum(axis=2) > limit
    border[:-1, :] |= ((lab[1:, :] - lab[:-1, :]) ** 2).sum(axis=2) > limit
    return border.astype(np.uint8) * 255


def paint_lines(flat: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """``flat`` with ``lines`` drawn in ``EDGE_COLOR``, softened by one pixel so they do not alias."""
    alpha = cv2.GaussianBlur(lines, (3, 3), 0).astype(np.float32)[..., None] / 255.0
    ink = np.array(EDGE_COLOR, dtype=np.float32)
    out = flat.astype(np.float32) * (1.0 - alpha) + ink * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _lut_cell(pixels: np.ndarray) -> np.ndarray:
    """The lookup-table cell of each Nx3 uint8 RGB pixel."""
    shift = 8 - LUT_BITS
    p = pixels.astype(np.int32) >> shift
    return (p[:, 0] << (2 * LUT_BITS)) | (p[:, 1] << LUT_BITS) | p[:, 2]


@functools.cache
def _grid_lab() -> np.ndarray:
    """Lab of every lookup-table cell's centre colour, indexed like ``_lut_cell``."""
    step = 1 << (8 - LUT_BITS)
    levels = np.arange(0, 256, step, dtype=np.uint8) + step // 2
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    table = _to_lab(grid)
    table.flags.writeable = False  # shared by every call
    return table


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """Nx3 uint8 RGB to Nx3 float32 Lab (L 0-100, a/b about -128..127)."""
    as_image = (rgb.astype(np.float32) / 255.0).reshape(-1, 1, 3)
    return cv2.cvtColor(as_image, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def _snap_tones(centres: np.ndarray, tones: int) -> np.ndarray:
    """Kx3 Lab centres with their lightness snapped to ``tones`` even levels from ``TONE_DARKEST``
    to ``TONE_LIGHTEST`` (fewer than 2: unchanged)."""
    if tones < 2:
        return centres
    step = (TONE_LIGHTEST - TONE_DARKEST) / (tones - 1)
    snapped = centres.copy()
    level = np.clip(np.rint((centres[:, 0] - TONE_DARKEST) / step), 0, tones - 1)
    snapped[:, 0] = TONE_DARKEST + level * step
    return snapped


def _palette_rgb(centres: np.ndarray, look: PaletteLook) -> np.ndarray:
    """Kx3 Lab centres to Kx3 uint8 RGB, with ``look``'s saturation, lift toward white and tint."""
    rgb = cv2.cvtColor(centres.reshape(-1, 1, 3).astype(np.float32), cv2.COLOR_Lab2RGB)
    hsv = cv2.cvtColor(np.clip(rgb, 0.0, 1.0), cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * look.saturation, 0.0, 1.0)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3)
    rgb = (rgb + (1.0 - rgb) * look.lift) * np.array(look.tint, dtype=np.float32)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each point (squared Euclidean distance)."""
    # Per-channel accumulation rather than a BLAS matmul: the result must not depend on thread count.
    distances = np.zeros((len(points), len(centres)), dtype=np.float32)
    for channel in range(points.shape[1]):
        distances += (points[:, channel, None] - centres[None, :, channel]) ** 2
    return distances.argmin(axis=1)


def _kmeans(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k centres of weighted ``points`` (Nx3 float32): k-means++ seeding, then Lloyd iterations."""
    k = min(k, len(points))
    centres = np.empty((k, points.shape[1]), dtype=np.float32)
    centres[0] = points[rng.choice(len(points), p=weights / weights.sum())]
    closest = ((points - centres[0]) ** 2).sum(axis=1, dtype=np.float64)
    for i in range(1, k):
        score = closest * weights
        total = float(score.sum())
        if total <= 0.0:
            # Fewer distinct colours than k (flat test images): duplicate centres are harmless.
            centres[i:] = centres[0]
            break
        centres[i] = points[rng.choice(len(points), p=score / total)]
        closest = np.minimum(closest, ((points - centres[i]) ** 2).sum(axis=1, dtype=np.float64))
    for _ in range(KMEANS_MAX_ITER):
        labels = _nearest(points, centres)
        mass = np.bincount(labels, weights=weights, minlength=k)
        updated = centres.copy()
        filled = mass > 0  # an empty cluster keeps its centre
        for channel in range(points.shape[1]):
            sums = np.bincount(labels, weights=weights * points[:, channel], minlength=k)
            updated[filled, channel] = sums[filled] / mass[filled]
        moved = float(np.abs(updated - centres).max())
        centres = updated
        if moved < KMEANS_TOLERANCE:
            break
    return centres

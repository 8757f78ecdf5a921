"""How much of the toy's structure a variant kept: a weight-free edge-agreement score.

Contract: ``structure_score(photo, variant, mask)`` compares Canny edges of the source photo
(resized to the variant's size) with the variant's own, inside the subject mask when one is given
(else over the whole image), and returns a ``StructureScore``:

- ``precision``: the share of the variant's edges that lie near an edge of the photo (nothing
  invented); ``recall``: the share of the photo's edges the variant kept near where they were;
  ``f1`` their harmonic mean, 0 (nothing kept) to 1 (every outline where it was).
- "Near" is within ``tolerance_px`` (``TOLERANCE_FRACTION`` of the long side, at least 1 px): a
  cartoon redraws an outline a pixel or two off, which is still the same toy.
- Each image gets thresholds from its own median brightness (the usual automatic Canny rule),
  because a cartoon's contrast differs from the photo's; fixed thresholds would score the
  rendering style rather than the shape.

OpenCV and NumPy only: no torch, no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: Fraction of the long side within which an edge counts as kept (1% = 5 px at 512 px).
TOLERANCE_FRACTION = 0.01
#: Automatic Canny: thresholds at (1 - s) and (1 + s) times the image's median grey level.
CANNY_SIGMA = 0.33
#: Alpha (0-255) from which a mask pixel counts as subject.
SUBJECT_ALPHA = 128


@dataclass(frozen=True)
class StructureScore:
    """Edge agreement between a variant and its photo (see the module docstring)."""

    f1: float
    precision: float
    recall: float
    #: ``subject`` (inside the subject mask) or ``image`` (no usable mask: the whole picture).
    region: str
    tolerance_px: int


def edges(image: Image.Image) -> np.ndarray:
    """Boolean Canny edges with thresholds from the image's own median (``CANNY_SIGMA``)."""
    gray = cv2.GaussianBlur(cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY), (3, 3), 0)
    median = float(np.median(gray))
    low = int(max(0, (1.0 - CANNY_SIGMA) * median))
    high = int(min(255, max(low + 1, (1.0 + CANNY_SIGMA) * median)))
    return cv2.Canny(gray, low, high) > 0


def structure_score(photo: Image.Image, variant: Image.Image, mask: np.ndarray | None = None) -> StructureScore:
    """The score of ``variant`` against ``photo``; ``mask`` is uint8 alpha at the variant's size
    (255 = subject) or None for the whole image."""
    size = variant.size
    source = photo if photo.size == size else photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    tolerance = max(1, round(TOLERANCE_FRACTION * max(size)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    region = np.ones((size[1], size[0]), dtype=bool) if mask is None else mask >= SUBJECT_ALPHA
    # The subject's own outline sits on the mask's edge: widen the region so it is judged too.
    region = cv2.dilate(region.astype(np.uint8), kernel) > 0
    photo_edges, variant_edges = edges(source) & region, edges(variant) & region
    near_photo = cv2.dilate(photo_edges.astype(np.uint8), kernel) > 0
    near_variant = cv2.dilate(variant_edges.astype(np.uint8), kernel) > 0
    precision = _share(variant_edges, near_photo)
    recall = _share(photo_edges, near_variant)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return StructureScore(f1=round(f1, 4), precision=round(precision, 4), recall=round(recall, 4),
                          region="image" if mask is None else "subject", tolerance_px=tolerance)


def _share(edges_of: np.ndarray, near: np.ndarray) -> float:
    """The fraction of ``edges_of`` pixels inside ``near``; 0 when there are none (no structure to
    agree on is no evidence of agreement)."""
    total = int(edges_of.sum())
    return float((edges_of & near).sum()) / total if total else 0.0

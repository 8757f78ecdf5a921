"""The weight-free subject segmenter: OpenCV GrabCut, seeded rather than from a blind central
rectangle, because toys are rarely centred.

Contract: ``grabcut_mask(rgb)`` takes a working-size RGB array (``processor.pipeline.mask`` scales
the photo to ``WORK_SIDE`` first) and returns the hard subject mask (bool) before cleaning:

1. learn the background's colours from a band along the top, left and right borders (k-means in
   Lab; clusters holding a small share of the band are dropped, since a subject that touches the
   border must not become "background colour");
2. pixels far from every background colour (judged against the band's own spread) seed "probably
   subject", and so does the convex hull of their largest blob (a white belly looks like a white
   keyboard by colour alone); pixels of the border band that match the background seed "surely
   background", the rest "probably background" (``grabcut_mask`` says how a support surface, a
   hand and textured backgrounds are handled);
3. GrabCut refines the seeds with its colour models and the image's edges.

Cleaning (specks, largest component, holes) and feathering are the masker's, shared with the
model segmenters.
"""

from __future__ import annotations

import cv2
import numpy as np

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

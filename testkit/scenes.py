"""Synthetic scenes with a known subject: a toy-like figure on a desk in front of a wall.

``scene(width, height, seed, ...)`` returns the RGB image and the true subject mask, so mask tests
can measure IoU and background tests can check that the subject stayed where it was. The subject
is placed off-centre on purpose (a central-rectangle prior would be rewarded by centred toys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    #: True where the subject is.
    truth: np.ndarray


def _desk(width: int, height: int, rng: np.random.Generator, horizon: float) -> np.ndarray:
    """A pale wall above a wooden desk with grain, a soft light falloff and sensor noise."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    wall = np.array(rng.uniform([200, 195, 185], [235, 230, 220]), np.float32)
    wood = np.array(rng.uniform([150, 100, 60], [175, 125, 80]), np.float32)
    grain = 6.0 * np.sin(x / max(width, 1) * 40.0 + 3.0 * np.sin(y / max(height, 1) * 9.0))
    light = 1.0 - 0.12 * (x / max(width, 1))
    on_desk = (y >= horizon * height)[..., None]
    base = np.where(on_desk, wood + grain[..., None], wall) * light[..., None]
    base = base + rng.normal(0.0, 3.0, (height, width, 3)).astype(np.float32)
    return np.clip(base, 0, 255)


def scene(width: int, height: int, seed: int = 0, *, centre: tuple[float, float] = (0.33, 0.6),
          scale: float = 0.3, colour: tuple[int, int, int] | None = None) -> Scene:
    """A toy (body, head, ears, arms, eyes, a belly patch) at ``centre`` (fractions of w, h);
    ``scale`` is its height as a fraction of the image height."""
    rng = np.random.default_rng(seed)
    pixels = _desk(width, height, rng, horizon=0.45)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    truth_img = Image.new("L", (width, height), 0)
    body = colour or tuple(int(v) for v in rng.choice([(40, 90, 200), (200, 50, 60), (60, 160, 80), (230, 180, 30)]))
    darker = tuple(int(v * 0.7) for v in body)
    cx, cy = centre[0] * width, centre[1] * height
    s = scale * height
    parts = [
        ("ellipse", (cx - 0.28 * s, cy - 0.05 * s, cx + 0.28 * s, cy + 0.45 * s)),   # body
        ("ellipse", (cx - 0.22 * s, cy - 0.45 * s, cx + 0.22 * s, cy - 0.02 * s)),   # head
        ("ellipse", (cx - 0.26 * s, cy - 0.55 * s, cx - 0.10 * s, cy - 0.36 * s)),   # ears
        ("ellipse", (cx + 0.10 * s, cy - 0.55 * s, cx + 0.26 * s, cy - 0.36 * s)),
        ("ellipse", (cx - 0.40 * s, cy + 0.02 * s, cx - 0.18 * s, cy + 0.22 * s)),   # arms
        ("ellipse", (cx + 0.18 * s, cy + 0.02 * s, cx + 0.40 * s, cy + 0.22 * s)),
    ]
    draw, truth = ImageDraw.Draw(image), ImageDraw.Draw(truth_img)
    for i, (_, box) in enumerate(parts):
        draw.ellipse(box, fill=darker if i >= 4 else body)
        truth.ellipse(box, fill=255)
    # Details inside the subject (eyes, belly patch): holes a cleaned mask must fill.
    for dx in (-0.09, 0.09):
        e = 0.035 * s
        draw.ellipse((cx + dx * s - e, cy - 0.28 * s - e, cx + dx * s + e, cy - 0.28 * s + e), fill=(20, 20, 25))
    draw.ellipse((cx - 0.13 * s, cy + 0.12 * s, cx + 0.13 * s, cy + 0.35 * s), fill=(240, 235, 225))
    # Plastic shading: lighter top-left, darker bottom-right, only on the subject.
    arr = np.asarray(image, np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 1.0 + 0.15 * ((cx - xx) + (cy - yy)) / max(s, 1.0)
    inside = np.asarray(truth_img) > 127
    arr[inside] = np.clip(arr[inside] * shade[inside][:, None], 0, 255)
    out = Image.fromarray(arr.astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.6))
    return Scene(out, inside)


#: (width, height): 4:3, 3:4, 16:9, 1:1.
ASPECTS = {"4:3": (160, 120), "3:4": (120, 160), "16:9": (192, 108), "1:1": (128, 128)}

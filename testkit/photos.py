"""Composed toy photos: closer to what a phone takes than the flat synthetic scenes.

``composed_photo(kind, seed)`` draws one picture and its true subject mask: a plush toy (furry,
lit from one side, with a highlight and a soft contact shadow) standing on a table seen in
perspective in front of a room out of focus (the camera's depth of field), then the camera's own
faults: a little lens blur, sensor noise and JPEG compression. ``COMPOSED_KINDS`` are the rooms.
Same arguments, same pixels; nothing is read from disk.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: The rooms: a wooden table by a window, a white desk by a bookcase, a kitchen counter, a sofa.
COMPOSED_KINDS = ("window", "bookcase", "kitchen", "sofa")
#: Pixels: the long side of a composed photo (4:3 landscape).
COMPOSED_WIDTH, COMPOSED_HEIGHT = 384, 288
#: JPEG quality of the camera.
CAMERA_JPEG_QUALITY = 88
#: Plush colours (RGB).
PLUSH = ((196, 48, 52), (70, 110, 190), (150, 100, 62), (232, 190, 60), (88, 160, 96))


@dataclass(frozen=True)
class ComposedPhoto:
    kind: str
    image: Image.Image
    #: True where the toy is.
    truth: np.ndarray


def _room(rng: np.random.Generator, kind: str, w: int, h: int) -> Image.Image:
    """The far wall and its furniture, drawn sharp and then blurred as a lens focused on the toy would."""
    wall = {"window": (214, 222, 230), "bookcase": (232, 226, 214), "kitchen": (225, 228, 220),
            "sofa": (196, 204, 210)}[kind]
    room = Image.new("RGB", (w, h), wall)
    draw = ImageDraw.Draw(room)
    if kind == "window":
        draw.rectangle((w * 0.55, h * 0.05, w * 0.95, h * 0.5), fill=(250, 252, 255))
        draw.rectangle((w * 0.74, h * 0.05, w * 0.76, h * 0.5), fill=(170, 170, 165))
    elif kind == "bookcase":
        for i in range(14):
            x = w * 0.05 + i * w * 0.045
            colour = tuple(int(v) for v in rng.uniform(60, 220, 3))
            draw.rectangle((x, h * 0.12, x + w * 0.038, h * 0.45), fill=colour)
    elif kind == "kitchen":
        for i in range(6):
            draw.rectangle((i * w / 6 + 4, h * 0.05, (i + 1) * w / 6 - 4, h * 0.4), fill=(238, 238, 232))
    else:
        draw.rounded_rectangle((-w * 0.1, h * 0.15, w * 1.1, h * 0.62), radius=40, fill=(120, 90, 110))
    return room.filter(ImageFilter.GaussianBlur(h * 0.02))


def _table(rng: np.random.Generator, kind: str, w: int, h: int, horizon: float) -> np.ndarray:
    """The surface from the horizon down: grain that converges towards the back, light falling off."""
    base = {"window": (150, 104, 66), "bookcase": (236, 234, 228), "kitchen": (120, 122, 126),
            "sofa": (110, 82, 100)}[kind]
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    depth = np.clip((y - horizon * h) / ((1 - horizon) * h), 0.02, 1.0)
    grain = 7.0 * np.sin((x - w / 2) / depth / w * 60.0 + rng.uniform(0, 6))
    light = 0.85 + 0.15 * depth
    return (np.array(base, np.float32) + grain[..., None]) * light[..., None]


def _plush(rng: np.random.Generator, w: int, h: int, cx: float, feet: float, size: float,
           colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The toy's colours (float RGB, the whole frame) and its mask: round head and ears, body,
    arms and feet, shaded from the upper left, with fur and a highlight on the head."""
    shape = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(shape)
    head_r, body_rx, body_ry = size * 0.2, size * 0.24, size * 0.26
    body_y = feet - body_ry * 1.05
    head_y = body_y - body_ry - head_r * 0.7  # the head sits on the body
    for side in (-1, 1):
        ex = cx + side * head_r * 0.85
        draw.ellipse((ex - size * 0.07, head_y - head_r - size * 0.05, ex + size * 0.07, head_y - head_r + size * 0.08),
                     fill=255)
        ax = cx + side * (body_rx + size * 0.05)
        draw.ellipse((ax - size * 0.07, body_y - body_ry * 0.6, ax + size * 0.07, body_y + body_ry * 0.4), fill=255)
        fx = cx + side * body_rx * 0.5
        draw.ellipse((fx - size * 0.09, feet - size * 0.09, fx + size * 0.09, feet), fill=255)
    draw.ellipse((cx - body_rx, body_y - body_ry, cx + body_rx, body_y + body_ry), fill=255)
    draw.ellipse((cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), fill=255)
    mask = np.asarray(shape) > 127
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = np.clip(1.0 + 0.3 * ((cx - xx) + (head_y - yy)) / size, 0.55, 1.3)
    fur = np.asarray(Image.fromarray(rng.normal(128, 40, (h, w)).clip(0, 255).astype(np.uint8))
                     .filter(ImageFilter.GaussianBlur(0.8)), np.float32) - 128
    rgb = np.array(colour, np.float32) * shade[..., None] + 0.35 * fur[..., None]
    hx, hy = cx - head_r * 0.35, head_y - head_r * 0.4
    highlight = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (head_r * 0.3) ** 2)
    rgb += 70.0 * highlight[..., None]
    for side in (-1, 1):  # eyes and a muzzle: detail inside the subject
        ex, ey, er = cx + side * head_r * 0.38, head_y - head_r * 0.1, size * 0.022
        rgb[(xx - ex) ** 2 + (yy - ey) ** 2 <= er**2] = (25, 20, 22)
    muzzle = ((xx - cx) / (head_r * 0.45)) ** 2 + ((yy - head_y - head_r * 0.4) / (head_r * 0.3)) ** 2 <= 1
    rgb[muzzle] = np.array((238, 226, 210), np.float32) * shade[muzzle][:, None]
    return rgb, mask


def composed_photo(kind: str, seed: int = 0) -> ComposedPhoto:
    """One composed photo of room ``kind`` (``COMPOSED_KINDS``) and its true mask."""
    if kind not in COMPOSED_KINDS:
        raise ValueError(f"unknown room {kind!r}; choose from {', '.join(COMPOSED_KINDS)}")
    rng = np.random.default_rng(seed)
    w, h = COMPOSED_WIDTH, COMPOSED_HEIGHT
    horizon = rng.uniform(0.42, 0.55)
    frame = np.asarray(_room(rng, kind, w, h), np.float32)
    rows = np.arange(h)[:, None] >= horizon * h
    frame = np.where(rows[..., None], _table(rng, kind, w, h, horizon), frame)
    size = h * rng.uniform(0.5, 0.68)
    cx, feet = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.86, 0.95)
    # A soft contact shadow on the table, offset away from the light.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shadow = np.exp(-(((xx - cx - size * 0.08) / (size * 0.4)) ** 2 + ((yy - feet) / (size * 0.06)) ** 2))
    frame *= 1.0 - 0.45 * shadow[..., None]
    colour = PLUSH[int(rng.integers(len(PLUSH)))]
    toy, truth = _plush(rng, w, h, cx, feet, size, colour)
    frame[truth] = toy[truth]
    picture = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.7))
    noisy = np.asarray(picture, np.float32) + rng.normal(0, 2.5, (h, w, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=CAMERA_JPEG_QUALITY)
    return ComposedPhoto(kind, Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), truth)

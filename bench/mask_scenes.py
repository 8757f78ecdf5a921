"""Synthetic toy photos with a known subject mask, for the mask benchmark and its CI test.

Every scene is drawn from a seed (same arguments, same pixels) and comes with the true subject
mask. The scene types are the ones real toy photos fail on (issue "subject masks that work on
real toy photos"): a plain wall; a toy standing on a floor or desk that meets the bottom edge with
a wall behind; a toy on a shelf; a hand holding the toy from an edge; a toy lying on a patterned
blanket; a textured background (sofa fabric, carpet). Each is drawn at several placements (off
centre, low, cut off by the bottom edge) and aspect ratios (portrait, landscape, square).

The toys are plush-like figures, not discs: a body, a head, ears or horns, arms, legs with paler
feet, a muzzle and a belly patch, eyes, shading and fabric grain, in varied colours.

Synthetic scenes are easier than real photos (no clutter, no depth of field, no real fabric
shading); the benchmark says so next to its figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Scene types, in report order.
SCENE_TYPES = ("wall", "floor", "shelf", "hand", "blanket", "textured")
#: Name -> (width, height) at long side 1: portrait, landscape, square (scaled by ``long_side``).
ASPECTS = {"3:4": (0.75, 1.0), "4:3": (1.0, 0.75), "16:9": (1.0, 0.5625), "1:1": (1.0, 1.0)}
#: (centre x as a fraction of the width, height of the toy as a fraction of the image height,
#: how far below the bottom edge its feet go as a fraction of its height: > 0 is cut off).
PLACEMENTS = ((0.35, 0.55, -0.05), (0.62, 0.7, -0.02), (0.5, 0.8, 0.12))
#: Body colours (RGB) of the toys: red, blue, brown, yellow, green, pink, purple, orange.
TOY_COLOURS = ((200, 35, 45), (45, 90, 190), (125, 80, 50), (225, 185, 40), (60, 150, 75), (225, 120, 160),
               (120, 70, 160), (225, 120, 40))
#: Skin tones (RGB) for the hand scenes.
SKIN = ((232, 190, 160), (200, 150, 115), (160, 110, 80), (110, 75, 55))


@dataclass(frozen=True)
class MaskScene:
    kind: str
    aspect: str
    placement: int
    seed: int
    image: Image.Image
    #: True where the toy is (a hand in front of it is not).
    truth: np.ndarray


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, (h, w, 3)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (a coarse random grid scaled up bicubically)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = Image.fromarray(((rng.random((gh, gw)) * 255)).astype(np.uint8), "L")
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1.0


def _wall(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    colour = rng.uniform([175, 170, 160], [240, 235, 228])
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    light = 1.0 - 0.10 * x * rng.uniform(0.5, 1.5) - 0.06 * y
    return colour * light * np.ones((h, w, 1), np.float32)


def _surface(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """A floor, desk top or shelf board: wood grain, a grey desk mat or carpet."""
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    pick = kind if kind != "any" else rng.choice(["wood", "mat", "carpet"])
    if pick == "wood":
        base = rng.uniform([140, 90, 50], [190, 140, 90])
        grain = 8.0 * np.sin(x / max(w, 1) * rng.uniform(25, 60) + 3.0 * np.sin(y / max(h, 1) * 7.0))
        out = base + grain[..., None]
    elif pick == "mat":
        g = rng.uniform(80, 130)
        out = np.array([g, g * 0.97, g * 0.95]) + 6.0 * _smooth_noise(rng, h, w, 6)[..., None]
    else:
        base = rng.uniform([90, 80, 70], [170, 150, 130])
        out = base + 10.0 * _smooth_noise(rng, h, w, 2)[..., None]
    # Light falls off towards the front: surfaces are darker at the bottom of the frame.
    depth = 1.0 - 0.12 * (y / max(h, 1))
    return (out * depth[..., None]).astype(np.float32)


def _blanket(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A patterned blanket: checks, stripes or flowers in two or three colours, soft folds."""
    colours = [rng.uniform(60, 235, 3) for _ in range(3)]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(0.07, 0.14) * max(h, w)
    pattern = rng.choice(["checks", "stripes", "flowers"])
    if pattern == "checks":
        index = ((x // period + y // period) % 2).astype(int)
        index[(x % period < period * 0.15)] = 2
    elif pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        index = ((t // (period * 0.5)) % 3).astype(int)
    else:
        index = np.zeros((h, w), int)
        cx = (x % period) - period / 2
        cy = (y % period) - period / 2
        r = np.hypot(cx, cy)
        petals = np.abs(np.cos(3 * np.arctan2(cy, cx)))
        index[r < period * (0.2 + 0.2 * petals)] = 1
        index[r < period * 0.1] = 2
    out = np.stack(colours)[index]
    folds = 1.0 + 0.08 * _smooth_noise(rng, h, w, max(h, w) / 4)
    return (out * folds[..., None] + 6.0 * _smooth_noise(rng, h, w, 1.5)[..., None]).astype(np.float32)


def _textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sofa fabric or carpet: a colour with strong fine texture and coarse mottling."""
    base = rng.uniform([90, 85, 80], [190, 180, 170])
    fine = 16.0 * _smooth_noise(rng, h, w, 1.2) + rng.normal(0.0, 10.0, (h, w)).astype(np.float32)
    weave = 14.0 * np.sin(np.arange(w, dtype=np.float32)[None, :] * rng.uniform(1.2, 2.2)) * \
        np.sin(np.arange(h, dtype=np.float32)[:, None] * rng.uniform(1.2, 2.2))
    coarse = 1.0 + 0.12 * _smooth_noise(rng, h, w, max(h, w) / 5)
    return ((base + (fine + weave)[..., None]) * coarse[..., None]).astype(np.float32)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _toy(rng: np.random.Generator, w: int, h: int, cx: float, feet: float, size: float,
         lying: bool = False) -> tuple[Image.Image, np.ndarray]:
    """An RGBA layer with a plush toy standing with its feet at y = ``feet`` (or lying, seen from
    above), ``size`` px tall; and its mask. Body parts are ellipses with random proportions."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    body = np.array(TOY_COLOURS[int(rng.integers(len(TOY_COLOURS)))], np.float32)
    body = np.clip(body * rng.uniform(0.85, 1.1), 0, 255)
    pale = tuple(int(v) for v in rng.uniform([215, 205, 185], [245, 238, 225]))
    c = tuple(int(v) for v in body)
    s = size
    top = feet - s
    head_r = s * rng.uniform(0.17, 0.22)
    body_rx, body_ry = s * rng.uniform(0.2, 0.27), s * rng.uniform(0.2, 0.25)
    head_y = top + s * 0.08 + head_r
    body_y = head_y + head_r * 0.7 + body_ry
    leg_y = min(feet - s * 0.09, body_y + body_ry * 0.8)
    # Ears (round) or horns (pale, pointed up) at the top of the head.
    horns = rng.random() < 0.5
    for side in (-1, 1):
        ex = cx + side * head_r * rng.uniform(0.7, 0.95)
        if horns:
            draw.polygon([(ex - s * 0.035, head_y - head_r * 0.6), (ex + s * 0.035, head_y - head_r * 0.6),
                          (ex + side * s * 0.03, top)], fill=pale)
        else:
            _ellipse(draw, ex, head_y - head_r * 0.8, s * 0.07, s * 0.065, c)
    # Arms out to the sides, legs with pale feet.
    arm_y = body_y - body_ry * 0.4
    spread = rng.uniform(0.9, 1.3)
    for side in (-1, 1):
        ax = cx + side * (body_rx + s * 0.06 * spread)
        _ellipse(draw, ax, arm_y + s * 0.05, s * 0.075, s * 0.14, c)
        _ellipse(draw, ax + side * s * 0.01, arm_y + s * 0.16, s * 0.06, s * 0.05, pale)
        lx = cx + side * body_rx * 0.55
        _ellipse(draw, lx, leg_y - s * 0.03, s * 0.085, s * 0.1, c)
        _ellipse(draw, lx, feet - s * 0.055, s * 0.085, s * 0.055, pale)
    _ellipse(draw, cx, body_y, body_rx, body_ry, c)
    _ellipse(draw, cx, head_y, head_r, head_r * 0.95, c)
    mask = np.asarray(layer.getchannel("A")) > 0
    # Inside details: belly patch, muzzle, eyes (holes a cleaned mask must fill).
    if rng.random() < 0.7:
        _ellipse(draw, cx, body_y + body_ry * 0.1, body_rx * 0.6, body_ry * 0.7, pale)
    _ellipse(draw, cx, head_y + head_r * 0.35, head_r * 0.55, head_r * 0.38, pale)
    for side in (-1, 1):
        _ellipse(draw, cx + side * head_r * 0.4, head_y - head_r * 0.15, s * 0.018, s * 0.022, (20, 18, 20))
    if lying:  # seen from above on a blanket: the same figure, turned
        angle = float(rng.uniform(-70, 70))
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, feet - s / 2))
        mask = np.asarray(layer.getchannel("A")) > 127
    return layer, mask


def _shade_and_grain(rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray, cx: float, cy: float,
                     size: float) -> np.ndarray:
    """Plush shading (light from the upper left, darker towards the bottom right) and fabric grain."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.0 + 0.22 * ((cx - xx) + (cy - yy)) / max(size, 1.0)
    grain = 10.0 * _smooth_noise(rng, h, w, 1.3)
    out = rgb.copy()
    out[mask] = out[mask] * np.clip(shade[mask], 0.6, 1.25)[:, None] + grain[mask][:, None]
    return out


def _hand(rng: np.random.Generator, w: int, h: int, toy_box: tuple[float, float, float, float]) -> np.ndarray:
    """A hand and forearm entering from the left, right or bottom edge and gripping the toy's side:
    a skin-coloured mask (bool) the scene paints on top of the toy."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = toy_box
    side = rng.choice(["left", "right", "bottom"])
    thick = (x1 - x0) * rng.uniform(0.28, 0.38)
    if side == "left":
        grip = (x0 + (x1 - x0) * 0.12, y0 + (y1 - y0) * rng.uniform(0.45, 0.7))
        start = (-thick, grip[1] + rng.uniform(-0.1, 0.25) * h)
    elif side == "right":
        grip = (x1 - (x1 - x0) * 0.12, y0 + (y1 - y0) * rng.uniform(0.45, 0.7))
        start = (w + thick, grip[1] + rng.uniform(-0.1, 0.25) * h)
    else:
        grip = (x0 + (x1 - x0) * rng.uniform(0.3, 0.7), y1 - (y1 - y0) * 0.15)
        start = (grip[0] + rng.uniform(-0.2, 0.2) * w, h + thick)
    draw.line([start, grip], fill=255, width=int(thick))
    _ellipse(draw, grip[0], grip[1], thick * 0.75, thick * 0.65, 255)
    # Fingers wrapped over the toy's front.
    for k in range(4):
        fx = grip[0] + (thick * 0.5 if side == "left" else -thick * 0.5 if side == "right" else 0)
        fy = grip[1] - thick * 0.45 + k * thick * 0.3
        if side == "bottom":
            fx, fy = grip[0] - thick * 0.45 + k * thick * 0.3, grip[1] - thick * 0.5
        _ellipse(draw, fx, fy, thick * 0.2, thick * 0.14, 255)
    return np.asarray(layer) > 0


def make_scene(kind: str, aspect: str, placement: int, seed: int, long_side: int = 256) -> MaskScene:
    """One synthetic photo of scene type ``kind`` (see ``SCENE_TYPES``) and its true mask."""
    if kind not in SCENE_TYPES:
        raise ValueError(f"unknown scene type {kind!r}; choose from {', '.join(SCENE_TYPES)}")
    rng = np.random.default_rng([SCENE_TYPES.index(kind), placement, seed, sorted(ASPECTS).index(aspect)])
    fw, fh = ASPECTS[aspect]
    w, h = max(16, round(fw * long_side)), max(16, round(fh * long_side))
    fx, fsize, cut = PLACEMENTS[placement % len(PLACEMENTS)]
    cx = w * float(np.clip(fx + rng.uniform(-0.05, 0.05), 0.2, 0.8))
    size = h * fsize * rng.uniform(0.92, 1.05)
    size = min(size, w * 1.1)  # a wide-armed toy must still fit a portrait frame
    feet = h + size * cut
    if kind == "wall":
        back = _wall(rng, h, w)
    elif kind in ("floor", "shelf"):
        back = _wall(rng, h, w)
        if kind == "floor":  # the floor or desk meets the bottom edge behind and around the feet
            horizon = int(h * rng.uniform(0.35, 0.65))
            horizon = min(horizon, int(feet - size * 0.15))
            back[horizon:] = _surface(rng, h - horizon, w, "any")
        else:  # a shelf board whose front edge is in frame, a dark gap under it
            board_top = int(min(h * rng.uniform(0.62, 0.75), feet - size * 0.12))
            feet = min(feet, board_top + (h - board_top) * 0.45)
            lip = board_top + max(2, int((h - board_top) * 0.55))
            back[board_top:lip] = _surface(rng, lip - board_top, w, "wood")
            back[lip:lip + max(2, h // 40)] *= 0.7  # the board's front edge, in shade
            back[lip + max(2, h // 40):] *= 0.55    # under the shelf
    elif kind == "hand":
        back = _wall(rng, h, w)
        horizon = int(h * rng.uniform(0.55, 0.8))
        back[horizon:] = _surface(rng, h - horizon, w, "any")
        feet = min(feet, h * 0.9)  # held up in the air
    elif kind == "blanket":
        back = _blanket(rng, h, w)
    else:
        back = _textured(rng, h, w)
    back = back + _noise(rng, h, w, 3.0)
    layer, toy_mask = _toy(rng, w, h, cx, feet, size, lying=kind == "blanket")
    picture = Image.fromarray(np.clip(back, 0, 255).astype(np.uint8), "RGB")
    if kind in ("floor", "shelf", "hand", "wall"):  # a soft contact shadow under the feet
        shadow = Image.new("L", (w, h), 0)
        _ellipse(ImageDraw.Draw(shadow), cx, feet - size * 0.02, size * 0.35, size * 0.05, 90)
        shadow = shadow.filter(ImageFilter.GaussianBlur(max(1.0, size * 0.03)))
        dark = np.asarray(shadow, np.float32)[..., None] / 255.0
        picture = Image.fromarray(np.clip(np.asarray(picture, np.float32) * (1 - dark), 0, 255).astype(np.uint8))
    picture.paste(layer, (0, 0), layer)
    rgb = _shade_and_grain(rng, np.asarray(picture, np.float32), toy_mask, cx, feet - size * 0.7, size)
    truth = toy_mask
    if kind == "hand":
        ys, xs = np.nonzero(toy_mask)
        hand = _hand(rng, w, h, (xs.min(), ys.min(), xs.max(), ys.max()))
        skin = np.array(SKIN[int(rng.integers(len(SKIN)))], np.float32)
        yy = np.mgrid[0:h, 0:w][0].astype(np.float32)
        tone = skin * (1.0 + 0.08 * _smooth_noise(rng, h, w, max(h, w) / 8))[..., None] * \
            (1.0 - 0.1 * yy / h)[..., None]
        rgb[hand] = tone[hand]
        truth = toy_mask & ~hand
    rgb = np.clip(rgb + _noise(rng, h, w, 2.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB").filter(ImageFilter.GaussianBlur(0.6))
    return MaskScene(kind, aspect, placement, seed, image, truth)


def scene_set(long_side: int = 256, seeds: int = 1, aspects: tuple[str, ...] = ("3:4", "4:3", "1:1"),
              kinds: tuple[str, ...] = SCENE_TYPES) -> Iterator[MaskScene]:
    """Every scene type at every placement and aspect ratio, ``seeds`` draws each."""
    for kind in kinds:
        for aspect in aspects:
            for placement in range(len(PLACEMENTS)):
                for seed in range(seeds):
                    yield make_scene(kind, aspect, placement, seed, long_side)

"""Output encoding: variant PNGs with their generation parameters, contact sheets, digests.

Every encoder here is deterministic: equal images and parameters give equal bytes (no timestamps,
fixed compression settings), so re-running an input rewrites identical objects.

Every colour picture says it is sRGB (decode converted any embedded profile, so it is): a PNG
carries the ``sRGB`` chunk, a JPEG the sRGB ICC profile. A viewer that colour-manages then shows
the colours as computed, not as whatever it assumes for untagged files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from functools import lru_cache
from typing import Any

from PIL import Image, ImageCms, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from processor.config import DEFAULT_CONTACT_SHEET_MAX_PIXELS, DEFAULT_PNG_COMPRESS_LEVEL

#: The PNG text key Stable Diffusion tools (A1111, ComfyUI importers, Civitai) read.
PARAMETERS_KEY = "parameters"
#: zlib level for PNGs (``pipeline.png_compress_level``): always passed explicitly, so the bytes
#: never depend on a library default.
PNG_COMPRESS_LEVEL = DEFAULT_PNG_COMPRESS_LEVEL
#: JPEG quality of contact sheets.
CONTACT_SHEET_QUALITY = 85
#: JPEG quality of pictures made to be looked at, not reused (mask overlays).
PREVIEW_QUALITY = 90
#: The PNG ``sRGB`` chunk's rendering intent (0: perceptual, what encoders write by default).
PNG_SRGB_INTENT = 0
#: Bytes 24-35 of an ICC profile's header: its creation date and time.
ICC_DATE = slice(24, 36)
#: Tiles per contact-sheet row before it wraps.
CONTACT_SHEET_MAX_COLUMNS = 6
#: Pixels between tiles and around the sheet.
CONTACT_SHEET_GAP = 4
#: Pixels: height of the label strip under each tile.
CONTACT_SHEET_LABEL_HEIGHT = 16
#: Points: label font size.
CONTACT_SHEET_FONT_SIZE = 11
#: A tile is at most this many times as wide as it is high (a panorama is shown shrunk).
CONTACT_SHEET_MAX_TILE_ASPECT = 4
#: Pixels: the smallest tile height a sheet shrinks to when it must fit ``max_pixels``.
CONTACT_SHEET_MIN_HEIGHT = 8
CONTACT_SHEET_BACKGROUND = (255, 255, 255)
CONTACT_SHEET_TEXT = (30, 30, 30)
#: Lines a contact sheet's legend takes at most (wrapped to the sheet's width, the rest cut).
CONTACT_SHEET_LEGEND_LINES = 3

# A1111's fixed leading fields, in its order: (our parameter key, A1111 label).
_A1111_FIELDS: tuple[tuple[str, str], ...] = (
    ("steps", "Steps"),
    ("sampler", "Sampler"),
    ("scheduler", "Schedule type"),
    ("guidance", "CFG scale"),
    ("seed", "Seed"),
)
# Keys consumed elsewhere in the text (prompt lines, Size, Model), not repeated as "Key: value".
_CONSUMED = {"prompt", "negative", "negative_prompt", "model", *(key for key, _ in _A1111_FIELDS)}


def a1111_parameters(parameters: dict[str, Any], width: int, height: int) -> str:
    """``parameters`` as A1111 "infotext": prompt line, optional "Negative prompt:" line, then
    ``Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: WxH, Model: ..`` and every other key as
    ``Key: value`` (snake_case keys become "Snake case"). ``None`` values are left out.

    A parameter set without a prompt (the toon engine) gets "<engine> cartoon"; ``Steps`` is always
    written (0 when absent) because readers recognise the parameter line by it.
    """
    prompt = parameters.get("prompt")
    if prompt is None:
        prompt = f"{parameters.get('engine') or ''} cartoon".strip()
    lines = [str(prompt)]
    negative = parameters.get("negative", parameters.get("negative_prompt"))
    if negative:
        lines.append(f"Negative prompt: {negative}")

    fields: list[tuple[str, Any]] = []
    for key, label in _A1111_FIELDS:
        value = parameters.get(key, 0 if key == "steps" else None)
        if value is not None:
            fields.append((label, value))
    fields.append(("Size", f"{width}x{height}"))
    if parameters.get("model") is not None:
        fields.append(("Model", parameters["model"]))
    for key, value in parameters.items():
        if key not in _CONSUMED and value is not None:
            fields.append((_label(key), value))
    lines.append(", ".join(f"{label}: {_quote(_format(value))}" for label, value in fields))
    return "\n".join(lines)


#: Our ``scheduler`` names as A1111 writes them: (Sampler, Schedule type).
A1111_SAMPLERS: dict[str, tuple[str, str]] = {
    "dpmpp-2m-karras": ("DPM++ 2M", "Karras"),
    "dpmpp-2m": ("DPM++ 2M", "Automatic"),
    "euler-a": ("Euler a", "Automatic"),
    "euler": ("Euler", "Automatic"),
    "ddim": ("DDIM", "Automatic"),
    "unipc": ("UniPC", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
    "lcm": ("LCM", "Automatic"),
    # FLUX.1 / SD 3 keep their own flow-matching Euler sampler (recorded by class name): Forge,
    # the A1111 fork that runs them, writes it as Euler on the Simple schedule.
    "FlowMatchEulerDiscreteScheduler": ("Euler", "Simple"),
}


def infotext_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """A diffusion variant's parameters in the shape ``a1111_parameters`` writes as A1111 reads
    them: ``Sampler`` and ``Schedule type`` from our scheduler name; ``CFG scale`` and
    ``Denoising strength`` from the first img2img round (the one that re-draws most; every round
    stays in ``Rounds``); ``ControlNet <i>`` units, ``Refiner`` and ``Lora hashes`` where used.
    Parameters of other engines (toon) pass through unchanged."""
    scheduler = parameters.get("scheduler")
    if scheduler not in A1111_SAMPLERS or "sampler" in parameters:
        return parameters
    sampler, schedule = A1111_SAMPLERS[scheduler]
    out = dict(parameters) | {"sampler": sampler, "scheduler": schedule}
    rounds = parameters.get("rounds") or []
    head: dict[str, Any] = {}
    if rounds:
        out.setdefault("guidance", rounds[0].get("guidance"))
        head["denoising_strength"] = rounds[0].get("strength")
    tail: dict[str, Any] = {}
    for i, unit in enumerate(parameters.get("controlnet_units") or []):
        settings = "".join(f", {_label(k)}: {_format(v)}" for k, v in unit.get("settings", {}).items())
        # A1111's ControlNet extension lists T2I-Adapters as units too; the kind says which ran.
        kind = ", Kind: t2i-adapter" if unit.get("kind") == "t2i-adapter" else ""
        tail[f"ControlNet {i}"] = (f"Module: {unit['type']}, Model: {unit['model']}, Weight: {_format(unit['scale'])}, "
                                   f"Guidance Start: 0, Guidance End: {_format(unit['guidance_end'])}{settings}{kind}")
    if parameters.get("ip_adapter"):  # the A1111 ControlNet extension runs an IP-Adapter as one more unit
        from processor.pipeline.ip_adapter import a1111_unit

        tail[f"ControlNet {len(parameters.get('controlnet_units') or [])}"] = a1111_unit(parameters["ip_adapter"])
    refiners = [r for r in rounds if r.get("refiner")]
    if refiners:  # A1111's field; ours is a last img2img round, so there is no "Refiner switch at"
        tail["Refiner"] = refiners[0].get("model")
    hashes = parameters.get("lora_hashes") or {}
    if hashes:
        tail["lora_hashes"] = ", ".join(f"{name}: {digest}" for name, digest in hashes.items())
    # ``size`` is the working size, which is the image's: A1111 readers expect one Size field.
    for key in ("controlnet_units", "lora_hashes", "size", "ip_adapter"):
        out.pop(key, None)
    return {k: v for k, v in out.items() if k in _CONSUMED} | head | {
        k: v for k, v in out.items() if k not in _CONSUMED} | tail


def encode_png(image: Image.Image, parameters: dict[str, Any], *, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """``image`` as PNG bytes with ``a1111_parameters`` in a ``parameters`` text chunk."""
    info = PngInfo()
    info.add(b"sRGB", bytes([PNG_SRGB_INTENT]))
    # add_text writes tEXt for Latin-1 text and switches to iTXt (UTF-8) when it must.
    info.add_text(PARAMETERS_KEY, a1111_parameters(parameters, image.width, image.height))
    buffer = io.BytesIO()
    # icc_profile=None: a profile the picture's info still names must not replace the sRGB chunk
    # (a PNG holds one or the other).
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level, optimize=False, icc_profile=None)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """The sRGB ICC profile (LittleCMS's built-in), with its creation date zeroed so that the
    files that embed it stay byte-for-byte deterministic."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[ICC_DATE] = bytes(ICC_DATE.stop - ICC_DATE.start)
    return bytes(profile)


def encode_jpeg(image: Image.Image, *, quality: int = PREVIEW_QUALITY) -> bytes:
    """``image`` as a baseline JPEG tagged sRGB (its ICC profile)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False,
                              icc_profile=srgb_icc_profile())
    return buffer.getvalue()


def contact_sheet(
    original: Image.Image,
    variants: list[Image.Image],
    *,
    height: int,
    labels: list[str] | None = None,
    max_pixels: int = DEFAULT_CONTACT_SHEET_MAX_PIXELS,
    legend: str | None = None,
) -> bytes:
    """A JPEG of the original then every variant, each scaled to ``height`` (aspect kept, at most
    ``CONTACT_SHEET_MAX_TILE_ASPECT`` wide), in rows of at most ``CONTACT_SHEET_MAX_COLUMNS`` with
    a label under each tile. When that sheet would exceed ``max_pixels`` the tiles shrink until it
    fits, so its size is bounded whatever the number of tiles or the input's shape.

    ``labels`` names every tile, the original included (default "original", "1", "2", ...).
    ``legend`` explains the labels' abbreviations, under the last row (wrapped to the sheet's width,
    at most ``CONTACT_SHEET_LEGEND_LINES`` lines).
    """
    if height < 1:
        raise ValueError(f"contact sheet height must be at least 1 pixel, got {height}")
    images = [original, *variants]
    if labels is None:
        labels = ["original", *(str(i + 1) for i in range(len(variants)))]
    if len(labels) != len(images):
        raise ValueError(
            f"contact sheet got {len(labels)} labels for {len(images)} tiles "
            f"(the original plus {len(variants)} variants)"
        )
    legend_room = CONTACT_SHEET_LEGEND_LINES * CONTACT_SHEET_LABEL_HEIGHT if legend else 0
    height = _fitting_height(images, height, max_pixels, legend_room)
    tiles = [_scale_to_tile(image, height) for image in images]
    rows = [tiles[i : i + CONTACT_SHEET_MAX_COLUMNS] for i in range(0, len(tiles), CONTACT_SHEET_MAX_COLUMNS)]
    row_height = height + CONTACT_SHEET_LABEL_HEIGHT + CONTACT_SHEET_GAP
    sheet_width = CONTACT_SHEET_GAP + max(sum(t.width + CONTACT_SHEET_GAP for t in row) for row in rows)
    font = _font()
    legend_lines = _wrap(legend, font, sheet_width - 2 * CONTACT_SHEET_GAP) if legend else []
    sheet = Image.new("RGB", (sheet_width, CONTACT_SHEET_GAP + row_height * len(rows)
                              + CONTACT_SHEET_LABEL_HEIGHT * len(legend_lines)), CONTACT_SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row_index, row in enumerate(rows):
        x = CONTACT_SHEET_GAP
        y = CONTACT_SHEET_GAP + row_index * row_height
        for column, tile in enumerate(row):
            sheet.paste(tile, (x, y))
            label = _fit_text(draw, labels[row_index * CONTACT_SHEET_MAX_COLUMNS + column], font, tile.width)
            draw.text((x + 1, y + height + 2), label, fill=CONTACT_SHEET_TEXT, font=font)
            x += tile.width + CONTACT_SHEET_GAP
    for n, line in enumerate(legend_lines):
        y = CONTACT_SHEET_GAP + row_height * len(rows) + n * CONTACT_SHEET_LABEL_HEIGHT
        draw.text((CONTACT_SHEET_GAP + 1, y), line, fill=CONTACT_SHEET_TEXT, font=font)
    return encode_jpeg(sheet, quality=CONTACT_SHEET_QUALITY)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tile_size(width: int, height: int, tile_height: int) -> tuple[int, int]:
    """The size of an image's tile: ``tile_height`` high, or less for one wider than the aspect cap."""
    max_width = CONTACT_SHEET_MAX_TILE_ASPECT * tile_height
    scaled = max(1, round(width * tile_height / height))
    if scaled <= max_width:
        return scaled, tile_height
    return max_width, max(1, round(height * max_width / width))


def _sheet_pixels(sizes: list[tuple[int, int]], tile_height: int, extra_height: int = 0) -> int:
    tiles = [_tile_size(w, h, tile_height) for w, h in sizes]
    rows = [tiles[i : i + CONTACT_SHEET_MAX_COLUMNS] for i in range(0, len(tiles), CONTACT_SHEET_MAX_COLUMNS)]
    width = CONTACT_SHEET_GAP + max(sum(t[0] + CONTACT_SHEET_GAP for t in row) for row in rows)
    return width * (CONTACT_SHEET_GAP + (tile_height + CONTACT_SHEET_LABEL_HEIGHT + CONTACT_SHEET_GAP) * len(rows)
                    + extra_height)


def _fitting_height(images: list[Image.Image], height: int, max_pixels: int, extra_height: int = 0) -> int:
    """The largest tile height up to ``height`` whose sheet, with ``extra_height`` pixels more (its
    legend), has at most ``max_pixels`` pixels."""
    sizes = [image.size for image in images]
    while height > CONTACT_SHEET_MIN_HEIGHT and _sheet_pixels(sizes, height, extra_height) > max_pixels:
        # Area grows about with the square of the height: shrink by the root of the excess.
        shrink = math.sqrt(max_pixels / _sheet_pixels(sizes, height, extra_height))
        height = max(CONTACT_SHEET_MIN_HEIGHT, min(height - 1, int(height * shrink)))
    return height


def _scale_to_tile(image: Image.Image, height: int) -> Image.Image:
    image = image.convert("RGB") if image.mode != "RGB" else image
    size = _tile_size(image.width, image.height, height)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=CONTACT_SHEET_FONT_SIZE)
    except (TypeError, ImportError, OSError):
        # Pillow without FreeType ships only the fixed bitmap font.
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis so it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words; at most
    ``CONTACT_SHEET_LEGEND_LINES`` lines, the last cut with an ellipsis when more was left."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > CONTACT_SHEET_LEGEND_LINES:
        lines = lines[:CONTACT_SHEET_LEGEND_LINES]
        lines[-1] += " …"
    return [_fit_text(measure, line, font, width) for line in lines]


def _label(key: str) -> str:
    words = key.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _format(value: Any) -> str:
    if isinstance(value, float):
        # 7.0 -> "7" as A1111 writes it; otherwise the shortest exact repr.
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=isinstance(value, dict))
    return str(value)


def _quote(text: str) -> str:
    # A1111's own rule (generation_parameters_copypaste.quote): values holding a separator are JSON strings.
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)

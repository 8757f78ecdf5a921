"""Test images made in memory: synthetic toy photos, odd-but-valid files and hostile inputs.

Tests never read ``../shared/toys``: every image here is drawn from a seed, so a test's input is
reproducible and nothing large or private is committed.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

try:  # HEIF encoding is optional here: callers skip the "heic" item when it is missing.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_ENCODER: str | None = pillow_heif.libheif_info().get("HEIF") or None
except ImportError:  # pragma: no cover - pillow-heif is a project dependency
    HEIF_ENCODER = None

#: Pixels: the default size of a synthetic photo (small, so tests stay fast).
SMALL_WIDTH, SMALL_HEIGHT = 160, 120
#: Pixels: the declared side of the decompression bomb (40000x40000 = 1.6 gigapixels).
BOMB_SIDE = 40_000
#: JPEG quality used for every generated JPEG (high, so colour checks can be tight).
JPEG_QUALITY = 92
#: EXIF tag number of Orientation.
EXIF_ORIENTATION = 0x0112

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def photo_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A synthetic "toy photo" in RGB: a textured, outlined toy on a soft, plain-ish background.

    The toy (body, head, eyes, a stripe) gives cartoon filters edges and flat regions to work on;
    mild noise stands in for sensor grain. Same arguments, same pixels.
    """
    rng = np.random.default_rng(seed)
    # Background: a gentle vertical gradient between two pastel colours, plus grain.
    top, bottom = rng.uniform(170, 235, 3), rng.uniform(120, 200, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    background = (top * (1 - t) + bottom * t) * np.ones((1, width, 1), dtype=np.float32)
    background += rng.normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    side = min(width, height)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.5, 0.65)
    body = tuple(int(v) for v in rng.integers(30, 230, 3))
    dark = tuple(max(0, v - 80) for v in body)
    bw, bh = side * 0.28, side * 0.22
    draw.ellipse((cx - bw, cy - bh, cx + bw, cy + bh), fill=body, outline=dark, width=max(1, side // 80))
    hr = side * 0.16
    hx, hy = cx + bw * 0.35, cy - bh - hr * 0.6
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=body, outline=dark, width=max(1, side // 80))
    eye = max(2.0, hr * 0.18)
    for dx in (-0.4, 0.4):
        ex, ey = hx + dx * hr, hy - 0.15 * hr
        draw.ellipse((ex - eye, ey - eye, ex + eye, ey + eye), fill=(20, 20, 25))
    stripe = tuple(int(v) for v in rng.integers(30, 230, 3))
    draw.rectangle((cx - bw * 0.6, cy - bh * 0.15, cx + bw * 0.6, cy + bh * 0.15), fill=stripe)

    # Texture on everything (fabric / plastic grain), then a slight blur like a real lens.
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.filter(ImageFilter.GaussianBlur(0.6))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` saved as ``fmt`` (a Pillow format name) into bytes."""
    if fmt.upper() in ("JPEG", "JPG"):
        options.setdefault("quality", JPEG_QUALITY)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def photo_bytes(width: int = 640, height: int = 480, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A synthetic toy photo encoded as ``fmt`` (JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, ...)."""
    image = photo_image(width, height, seed)
    if fmt.upper() == "GIF":
        image = image.quantize(colors=64)
    return encode(image, fmt)


# --- hand-made PNG chunks (for files Pillow will not write) ------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC, so readers trust it."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_scanlines: bytes) -> bytes:
    """A PNG from already-filtered scanlines (each prefixed by its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw_scanlines, 9))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid PNG header declaring ``side`` x ``side`` RGB, with one tiny scanline of data.

    A reader that trusts the header and allocates first would ask for side*side*3 bytes (4.8 GB
    for the default); the file itself is under 100 bytes.
    """
    return png_bytes(side, side, 8, 2, b"\x00" + b"\x00" * 3 * 16)


def png_16bit_rgb(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these; cameras and editors do)."""
    x = np.linspace(0, 65535, width, dtype=np.float64)
    y = np.linspace(0, 65535, height, dtype=np.float64)[:, None]
    rgb = np.stack(
        [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), np.full((height, width), 40000.0)],
        axis=-1,
    ).astype(">u2")
    rows = b"".join(b"\x00" + rgb[r].tobytes() for r in range(height))
    return png_bytes(width, height, 16, 2, rows)


def gray16_gradient(width: int, height: int) -> Image.Image:
    """A 16-bit grayscale (``I;16``) left-to-right ramp from 0 to 65535."""
    ramp = np.linspace(0, 65535, width).round().astype(np.uint16)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (height, width))))


# --- hostile and broken inputs -----------------------------------------------------------------


def _truncate(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def _jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    data = bytearray(photo_bytes(64, 64, "JPEG"))
    sof = data.find(b"\xff\xc0")
    # SOF0 layout: marker(2) length(2) precision(1) height(2) width(2) ...
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _gif_with_declared_size(width: int, height: int) -> bytes:
    """A valid small GIF whose logical screen claims ``width`` x ``height``."""
    data = bytearray(photo_bytes(64, 64, "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


def _webp_with_declared_canvas(width: int, height: int) -> bytes:
    """A small animated WebP whose VP8X header claims a ``width`` x ``height`` canvas."""
    data = bytearray(_animated("WEBP", 2, 64, 64))
    if data[12:16] != b"VP8X":  # pragma: no cover - Pillow writes VP8X for animations
        raise RuntimeError("expected a VP8X WebP")
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def bad_inputs() -> dict[str, bytes]:
    """Inputs the decoder must refuse, by name (each a different way to be wrong)."""
    jpeg = photo_bytes(SMALL_WIDTH, SMALL_HEIGHT, "JPEG", seed=1)
    png = photo_bytes(SMALL_WIDTH, SMALL_HEIGHT, "PNG", seed=2)
    webp = photo_bytes(SMALL_WIDTH, SMALL_HEIGHT, "WEBP", seed=3)
    return {
        "empty": b"",
        "truncated-jpeg": _truncate(jpeg),
        "truncated-png": _truncate(png),
        "truncated-webp": _truncate(webp),
        # Signature intact, everything after it cut: the header itself is unreadable.
        "png-signature-only": PNG_SIGNATURE + b"\x00\x00\x00\x0dIHD",
        # A JPEG start-of-image marker followed by noise: it sniffs as JPEG and fails to parse.
        "jpeg-garbage-body": jpeg[:3] + bytes(np.random.default_rng(4).integers(0, 256, 2000, dtype=np.uint8)),
        "text-as-png": b"This is not a picture, just a note someone saved as toy.png\n" * 4,
        "html-as-jpg": b"<!DOCTYPE html>\n<html><head><title>My toys</title></head>"
        b"<body><img src=toy.jpg></body></html>\n",
        "svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"></svg>\n',
        "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        "mp4": struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2" + b"\x00" * 64,
        "random-bytes": bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)),
        "png-bomb-40000": png_bomb(),
        "jpeg-bomb-65000": _jpeg_with_declared_size(65_000, 65_000),
        "gif-bomb-65535": _gif_with_declared_size(65_535, 65_535),
        "webp-bomb-16383": _webp_with_declared_canvas(16_383, 16_383),
        "one-pixel": encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "thin-strip": photo_bytes(2000, 20, "PNG"),
    }


# --- odd but valid inputs ----------------------------------------------------------------------


def _with_alpha(image: Image.Image) -> Image.Image:
    """``image`` with a transparent frame (alpha 0) around an opaque centre."""
    w, h = image.size
    alpha = Image.new("L", (w, h), 0)
    ImageDraw.Draw(alpha).rectangle((w // 8, h // 8, w - w // 8, h - h // 8), fill=255)
    rgba = image.convert("RGBA")
    # Transparent pixels keep a black colour on purpose: a decoder that drops alpha shows black.
    rgba.paste((0, 0, 0, 0), mask=Image.eval(alpha, lambda a: 255 - a))
    return rgba


#: Palette index that the palette test image marks transparent (tRNS); its colour is black.
PALETTE_CLEAR = 63


def _palette_with_transparency(image: Image.Image) -> Image.Image:
    """A ``P`` image whose frame uses a transparent palette entry (black underneath)."""
    w, h = image.size
    indexed = image.quantize(colors=PALETTE_CLEAR)  # indices 0..62 for the picture
    palette = indexed.getpalette() or []
    palette = palette[: 3 * PALETTE_CLEAR] + [0, 0, 0] * (256 - PALETTE_CLEAR)
    indexed.putpalette(palette)
    frame = Image.new("L", (w, h), 255)
    ImageDraw.Draw(frame).rectangle((w // 8, h // 8, w - w // 8, h - h // 8), fill=0)
    indexed.paste(PALETTE_CLEAR, mask=frame)
    return indexed


def _exif_rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(photo_image(width, height, seed=6), "JPEG", exif=exif.tobytes())


def _animated(fmt: str, frames: int, width: int, height: int) -> bytes:
    images = [photo_image(width, height, seed=10 + i) for i in range(frames)]
    if fmt == "GIF":
        images = [im.quantize(colors=64) for im in images]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def _plain_cmyk_jpeg(width: int, height: int) -> bytes:
    """A CMYK JPEG stored non-inverted and without Adobe's APP14 marker.

    Pillow always writes Adobe-inverted CMYK with the marker; inverting first and then dropping
    the marker yields the other convention that some non-Adobe tools write.
    """
    cmyk = photo_image(width, height, seed=7).convert("CMYK")
    inverted = Image.eval(cmyk, lambda v: 255 - v)
    data = encode(inverted, "JPEG")
    app14 = data.find(b"\xff\xee")
    while app14 != -1 and data[app14 + 4 : app14 + 9] != b"Adobe":
        app14 = data.find(b"\xff\xee", app14 + 2)
    if app14 == -1:  # pragma: no cover - Pillow writes the marker for CMYK
        raise RuntimeError("expected an Adobe APP14 marker in Pillow's CMYK JPEG")
    (length,) = struct.unpack(">H", data[app14 + 2 : app14 + 4])
    return data[:app14] + data[app14 + 2 + length :]


def _heic(width: int, height: int) -> bytes | None:
    if HEIF_ENCODER is None:
        return None
    try:
        return encode(photo_image(width, height, seed=8), "HEIF", quality=90)
    except (OSError, ValueError, KeyError, RuntimeError):  # no encoder in this libheif build
        return None


def _exif_rotated_heic(width: int, height: int, orientation: int) -> bytes | None:
    """A HEIC whose EXIF says ``orientation``; pillow-heif stores it as HEIF transforms."""
    if HEIF_ENCODER is None:
        return None
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    try:
        return encode(photo_image(width, height, seed=12), "HEIF", quality=90, exif=exif.tobytes())
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def _avif(width: int, height: int) -> bytes | None:
    try:
        return encode(photo_image(width, height, seed=9), "AVIF", quality=90)
    except (OSError, ValueError, KeyError):  # Pillow built without an AVIF encoder
        return None


def odd_but_valid() -> dict[str, bytes]:
    """Valid inputs that need work in decode (bit depth, colour mode, alpha, rotation, frames).

    Every image is ``SMALL_WIDTH`` x ``SMALL_HEIGHT`` as stored (≥ 64 px on the short side).
    Items whose encoder is missing here ("heic", "exif-rotated-heic", "avif") are left out rather
    than faked; tests that need them skip.
    """
    w, h = SMALL_WIDTH, SMALL_HEIGHT
    photo = photo_image(w, h, seed=11)
    items: dict[str, bytes | None] = {
        "png": encode(photo, "PNG"),
        "webp": encode(photo, "WEBP", quality=90),
        "png-16bit": encode(gray16_gradient(w, h), "PNG"),
        "png-16bit-rgb": png_16bit_rgb(w, h),
        "cmyk-jpeg": encode(photo.convert("CMYK"), "JPEG"),
        "cmyk-jpeg-no-adobe": _plain_cmyk_jpeg(w, h),
        "palette-transparent-png": encode(_palette_with_transparency(photo), "PNG", transparency=PALETTE_CLEAR),
        "rgba-png": encode(_with_alpha(photo), "PNG"),
        "la-png": encode(_with_alpha(photo).convert("LA"), "PNG"),
        "grayscale-jpeg": encode(photo.convert("L"), "JPEG"),
        "exif-rotated-jpeg": _exif_rotated_jpeg(w, h, orientation=6),
        "animated-gif": _animated("GIF", 3, w, h),
        "animated-webp": _animated("WEBP", 3, w, h),
        "heic": _heic(w, h),
        "exif-rotated-heic": _exif_rotated_heic(w, h, orientation=6),
        "avif": _avif(w, h),
        "bmp": encode(photo, "BMP"),
        "tiff": encode(photo, "TIFF"),
    }
    return {name: data for name, data in items.items() if data is not None}

"""Decode and validate one input before any model sees it.

``decode_image(data, limits)`` turns the bytes of an upload into a fully loaded RGB image, or
raises an ``InvalidInput`` subclass whose message says what is wrong and whose hint says what to
upload instead. The order of checks keeps peak memory bounded by the limits, not by the file:

1. the byte count (``pipeline.decode.max_bytes``), before anything is parsed;
2. the format, sniffed from magic numbers (the key's extension is never trusted);
3. the header alone (no pixel memory yet): width x height against ``pipeline.decode.max_pixels``
   and the shorter side against ``pipeline.decode.min_side``;
4. only then the pixels: first frame, EXIF orientation, and conversion to 8-bit RGB, each change
   recorded in ``DecodedImage.notes``.

Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is process-global and only
raises above twice its value, so it is a backstop here, never the limit.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageFile, ImageOps

from processor.config import DecodeSettings
from processor.errors import CorruptImage, ImageTooLarge, ImageTooSmall, UnsupportedFormat
from processor.pipeline.base import DecodedImage

# Once per process: teaches Pillow to open HEIC/HEIF (iPhone photos) through libheif.
pillow_heif.register_heif_opener()

#: Bytes read from the head of a file to sniff its format.
SNIFF_BYTES = 512
#: Characters of an unrecognised file's head quoted in the error message.
PREVIEW_CHARS = 16
#: Background that transparent pixels are composited on (so they do not turn black).
BACKGROUND_RGB = (255, 255, 255)
#: Formats users are asked for in hints (what we recommend, not all we accept).
RECOMMENDED = "a JPEG, PNG, WebP or HEIC photo"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ISO-BMFF (``ftyp``) brands of HEIF still images (HEVC-coded and generic MIAF).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
GENERIC_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})

#: Pillow's exceptions for data it cannot parse or decode. ``ImageFile`` turns IndexError,
#: TypeError and struct.error from a plugin's header parser into SyntaxError; truncation is
#: OSError; pillow-heif raises ValueError; some plugins raise EOFError or zlib.error.
PILLOW_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SRGB = ImageCms.createProfile("sRGB")


def decode_image(data: bytes, limits: DecodeSettings, *, name: str = "") -> DecodedImage:
    """Decode ``data`` into a validated, fully loaded RGB image (EXIF orientation applied).

    ``name`` (the object key, say) is used in messages only; the format comes from the bytes.
    Raises ``ImageTooLarge``, ``ImageTooSmall``, ``UnsupportedFormat`` or ``CorruptImage``.
    """
    where = f"{name}: " if name else ""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"{where}the file is {len(data):,} bytes ({_mib(len(data))}); "
            f"limit is {limits.max_bytes:,} ({_mib(limits.max_bytes)}) (pipeline.decode.max_bytes)"
        )
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        message, hint = describe_unsupported(data)
        raise UnsupportedFormat(where + message, hint=hint)

    if fmt == "WEBP":
        # Pillow's WebP plugin builds libwebp's animation decoder on open, which allocates the
        # whole canvas; read the declared size from the RIFF header and check it first.
        declared = webp_canvas_size(data[:SNIFF_BYTES])
        if declared is not None:
            _check_size(*declared, limits, where)
    opened = _open_header(data, fmt, where)
    try:
        return _decode_opened(opened, fmt, limits, where)
    finally:
        # Releases the decoder's buffers (and libheif's context) whether we succeeded or not.
        opened.close()


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name for a file starting with ``head``, or None when it is no image we read."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brands = _ftyp_brands(head)
        if brands & HEIF_BRANDS:
            return "HEIF"
        if brands & AVIF_BRANDS:
            return "AVIF"
        if brands & GENERIC_HEIF_BRANDS:
            return "HEIF"
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    # "BM" alone is too weak (text can start with it); the 4 reserved header bytes are zero.
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    return None


def webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """Width and height a WebP file declares (VP8X canvas, VP8 or VP8L frame), or None if unclear."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def describe_unsupported(data: bytes) -> tuple[str, str]:
    """``(message, hint)`` for bytes that are no image we read: what the file looks like instead."""
    if not data:
        return (
            "the file is empty (0 bytes)",
            f"The upload may have failed; upload {RECOMMENDED} again.",
        )
    head = data[:SNIFF_BYTES]
    # A UTF-8 byte order mark or leading blank lines do not change what a text file is.
    text_head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    lower = text_head.lower()
    quoted = _quote(text_head)
    if lower.startswith((b"<!doctype html", b"<html")):
        return (
            f"the file starts with {quoted} — it is HTML (a web page), not an image",
            f"Save the picture itself rather than the page, and upload {RECOMMENDED}.",
        )
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in lower):
        return (
            f"the file starts with {quoted} — it is an SVG drawing, not a photo",
            f"Export the drawing as PNG and upload that, or upload {RECOMMENDED}.",
        )
    if head.startswith(b"%PDF"):
        return (
            f"the file starts with {quoted} — it is a PDF document, not an image",
            f"Export the page or picture as JPEG or PNG, or upload {RECOMMENDED}.",
        )
    if head.startswith(b"PK\x03\x04"):
        return (
            "the file starts with 'PK' — it is a ZIP archive (or an Office document), not an image",
            f"Unpack it and upload each photo on its own as {RECOMMENDED}.",
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return (
            f"the file is ISO media of brand {brand!r} (MP4 / QuickTime video) — not a still image",
            f"Export one frame as a still picture and upload {RECOMMENDED}.",
        )
    if _looks_like_text(head):
        return (
            f"the file starts with {quoted} — it is text, not an image",
            f"Upload the photo file itself: {RECOMMENDED}.",
        )
    return (
        f"the file starts with bytes {head[:8].hex(' ')}, which match no supported image format "
        "(JPEG, PNG, WebP, HEIC/HEIF, AVIF, GIF, BMP, TIFF)",
        f"Convert it to {RECOMMENDED} and upload that.",
    )


# --- opening and checking the header ------------------------------------------------------------


@contextmanager
def _pillow_errors(where: str, fmt: str) -> Iterator[None]:
    """Translate Pillow's exceptions for bad data into our per-item errors, keeping the cause."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Only reached for sizes Pillow finds outside the header (a GIF frame larger than its
        # screen, say), or when warnings are errors; our own check runs first on the header size.
        raise ImageTooLarge(f"{where}the {fmt} image is too large to decode safely: {exc}") from exc
    except PILLOW_DECODE_ERRORS as exc:
        raise CorruptImage(f"{where}the {fmt} file is truncated or damaged ({_reason(exc)})") from exc


def _open_header(data: bytes, fmt: str, where: str) -> ImageFile.ImageFile:
    """Parse the header only: size and mode are known, no pixel memory is allocated yet.

    This calls the plugin factory Pillow registered for ``fmt`` (what ``Image.open`` does inside)
    instead of ``Image.open``: ``Image.open`` also runs the global bomb check, which raises before
    the size is visible, so our message could not say "40000x40000 is 1,600,000,000 px".
    """
    if fmt not in Image.OPEN:
        Image.init()
    registered = Image.OPEN.get(fmt)
    if registered is None:
        raise UnsupportedFormat(
            f"{where}the file is {fmt}, which this installation cannot decode",
            hint=f"Convert it to {RECOMMENDED} and upload that.",
        )
    factory, _accept = registered
    with _pillow_errors(where, fmt):
        opened = factory(io.BytesIO(data), "")  # "" is what Image.open passes for a file object
    if not isinstance(opened, ImageFile.ImageFile):  # pragma: no cover - every plugin returns one
        raise TypeError(f"Pillow's {fmt} factory returned {type(opened).__name__}")
    return opened


def _check_size(width: int, height: int, limits: DecodeSettings, where: str) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            f"{where}{width}x{height} is {pixels:,} px; limit is {limits.max_pixels:,} (pipeline.decode.max_pixels)"
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"{where}{width}x{height} has a shorter side of {min(width, height)} px; "
            f"minimum is {limits.min_side} (pipeline.decode.min_side)"
        )


# --- from header to RGB pixels ------------------------------------------------------------------


def _decode_opened(opened: ImageFile.ImageFile, fmt: str, limits: DecodeSettings, where: str) -> DecodedImage:
    notes: list[str] = []
    width, height = opened.size
    # libheif applies HEIF's rotation while parsing, so the header size is already upright;
    # DecodedImage wants the stored size, and the note says what happened.
    heif_orientation = opened.info.get("original_orientation") if fmt == "HEIF" else None
    if heif_orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    _check_size(width, height, limits, where)

    with _pillow_errors(where, fmt):
        # Counting frames walks frame headers only (no pixels); do it before load(), because
        # some plugins seek back to frame 0 afterwards, which would drop the loaded pixels.
        frames = getattr(opened, "n_frames", 1)
        opened.load()
    if frames > 1:
        notes.append(f"first of {frames} frames")
    if isinstance(heif_orientation, int) and heif_orientation != 1:
        notes.append(f"exif-orientation {heif_orientation} applied (by libheif)")
    bit_depth = opened.info.get("bit_depth")
    if fmt in ("HEIF", "AVIF") and isinstance(bit_depth, int) and bit_depth > 8:
        notes.append(f"reduced {bit_depth}-bit {fmt} to 8-bit")

    image: Image.Image = opened
    if fmt != "HEIF":
        image = _apply_exif_orientation(opened, notes)
    rgb = _to_rgb(image, fmt, where, notes)
    if rgb is opened:
        # Hand back a plain image, not the file object that still references the input bytes. A
        # new wrapper around the same pixel core, not copy(): a copy doubled decode's peak memory
        # (302 vs 151 MiB over baseline at max_pixels; python -m tests.test_security_memory).
        # close() below only drops the file object's reference to the core.
        rgb = rgb._new(rgb.im)  # noqa: SLF001 - Pillow has no public way to rewrap a core
    return DecodedImage(image=rgb, format=fmt, source_width=width, source_height=height, notes=notes)


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` turned upright per its EXIF Orientation tag (1..8), noting what was done."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except (SyntaxError, ValueError, OSError, struct.error, EOFError):
        # A damaged EXIF block does not damage the pixels; keep the picture as stored.
        notes.append("exif unreadable; orientation not applied")
        return image
    if orientation in (None, 1):
        return image
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        notes.append(f"ignored invalid exif-orientation {orientation!r}")
        return image
    upright = ImageOps.exif_transpose(image)
    notes.append(f"exif-orientation {orientation} applied")
    return upright


def _to_rgb(image: Image.Image, fmt: str, where: str, notes: list[str]) -> Image.Image:
    """``image`` as 8-bit RGB: alpha composited on white, palettes expanded, 16-bit scaled."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # Before the alpha branch: Pillow's convert("RGBA") would clip these to 255 first.
        return _high_depth_to_rgb(image, notes)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_alpha(image, notes)
    if mode == "CMYK":
        return _cmyk_to_rgb(image, fmt, notes)
    try:
        rgb = image.convert("RGB")
    except ValueError as exc:  # Pillow has no conversion from this mode (LAB, HSV, ...)
        raise UnsupportedFormat(
            f"{where}the {fmt} file uses pixel mode {mode}, which cannot be converted to RGB",
            hint=f"Save the photo as {RECOMMENDED} in RGB colour.",
        ) from exc
    label = {"L": "L (grayscale)", "1": "1 (black and white)", "P": "P (palette)"}.get(mode, mode)
    notes.append(f"converted {label} to RGB")
    return rgb


def _flatten_alpha(image: Image.Image, notes: list[str]) -> Image.Image:
    """Composite on white: transparent areas of a cut-out toy must not become black."""
    mode = image.mode
    what = f"{mode} with transparency" if mode in ("P", "L", "RGB", "1") else mode
    rgba = image.convert("RGBA")  # expands palettes and tRNS colour keys into an alpha channel
    low, _high = rgba.getchannel("A").getextrema()
    if low == 255:
        notes.append(f"converted {what} to RGB (fully opaque)")
        return rgba.convert("RGB")
    flat = Image.new("RGB", rgba.size, BACKGROUND_RGB)
    flat.paste(rgba, (0, 0), rgba)
    notes.append(f"converted {what} to RGB on white")
    return flat


def _cmyk_to_rgb(image: Image.Image, fmt: str, notes: list[str]) -> Image.Image:
    """CMYK to RGB, through the embedded ICC profile when there is a usable one.

    Pillow reads every 4-channel JPEG as Adobe-inverted CMYK (what Photoshop writes, with its
    APP14 marker). Without that marker the samples are plain CMYK, as browsers assume, so
    Pillow's inversion is undone.
    """
    how = "Adobe-inverted" if fmt == "JPEG" and "adobe" in image.info else "plain (no Adobe marker)"
    if fmt == "JPEG" and "adobe" not in image.info:
        image = ImageChops.invert(image)
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            notes.append(f"converted {how} CMYK to RGB (embedded ICC profile unusable; naive conversion)")
            return image.convert("RGB")
        if rgb is not None:
            notes.append(f"converted {how} CMYK to sRGB via the embedded ICC profile")
            return rgb
    notes.append(f"converted {how} CMYK to RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale scaled to 8 bits (Pillow's convert clips instead)."""
    mode = image.mode
    pixels = np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES:
        # The high byte is the 8-bit value, as libpng's strip-16 and Pillow's RGB;16 reading do.
        gray = (pixels >> 8).astype(np.uint8)
        notes.append(f"scaled 16-bit grayscale ({mode}) to 8-bit RGB")
    else:
        low, high = float(pixels.min()), float(pixels.max())
        if mode == "I" and low >= 0 and high <= 255:
            gray = pixels.astype(np.uint8)
            notes.append("converted I (32-bit grayscale, 8-bit range) to RGB")
        elif mode == "I" and low >= 0 and high <= 65535:
            gray = (pixels >> 8).astype(np.uint8)
            notes.append("scaled I (32-bit grayscale, 16-bit range) to 8-bit RGB")
        elif mode == "F" and low >= 0.0 and high <= 1.0:
            gray = np.rint(pixels * 255.0).astype(np.uint8)
            notes.append("scaled F (float grayscale, 0..1) to 8-bit RGB")
        else:
            span = high - low or 1.0
            gray = np.rint((pixels.astype(np.float32) - low) * (255.0 / span)).astype(np.uint8)
            notes.append(f"stretched {mode} grayscale ({low:g}..{high:g}) to 8-bit RGB")
    return Image.fromarray(gray, "L").convert("RGB")


# --- small helpers ------------------------------------------------------------------------------


def _ftyp_brands(head: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``head``."""
    (box_size,) = struct.unpack(">I", head[:4])
    end = min(max(box_size, 16), len(head))
    brands = {head[8:12]}
    brands.update(head[offset : offset + 4] for offset in range(16, end - 3, 4))
    return brands


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return bool(text) and printable / len(text) > 0.95


def _quote(head: bytes) -> str:
    """The first characters of ``head`` for a message: text in quotes, else hex bytes."""
    snippet = head[:PREVIEW_CHARS].decode("utf-8", "replace")
    snippet = snippet.split("\n", 1)[0].rstrip("\r")
    if snippet and all(ch.isprintable() for ch in snippet):
        return repr(snippet) if "'" in snippet else f"'{snippet}'"
    return "bytes " + head[:8].hex(" ")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"

"""Decode one file in this process: header, size check, first frame, EXIF orientation, 8-bit RGB.

``decode_here`` is the decoder itself; ``processor.pipeline.decode.decode_image`` decides whether
it runs here or in an isolated child under a CPU budget (``isolated``), and both paths run this
code. The order of checks keeps peak memory bounded by the limits, not by the file:

1. the header alone (no pixel memory yet): width x height against ``pipeline.decode.max_pixels``
   and the shorter side against ``pipeline.decode.min_side``;
2. only then the pixels: first frame, EXIF orientation, conversion to 8-bit RGB, and colour
   management: an embedded RGB ICC profile (Display P3 from a phone, Adobe RGB from a camera) is
   converted to sRGB, the colour space every model and every output assumes. Each change is
   recorded in ``DecodedPixels.notes`` and the profile's description in ``color_profile``; a
   profile that cannot be read or used is a note (the pixels are read as sRGB), never a failure.

Any exception a decoder raises on the way (Pillow's plugins raise OSError, SyntaxError, ValueError,
TypeError, RuntimeError, IndexError, struct.error, zlib.error, ...) is the input's
``CorruptImage``, with the original as its cause: a damaged photo is a failure record, never a dead
worker. ``MemoryError`` is let through: running out of memory says more about the process than
about the file, and ``decode_image`` turns it into a retryable failure.

Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is process-global and only
raises above twice its value, so it is a backstop here, never the limit.

This module imports no settings (``PixelLimits`` is a protocol) so that the isolated decoder child
starts on Pillow, numpy and pillow-heif alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageFile, ImageOps

from processor.errors import CorruptImage, ImageTooLarge, ImageTooSmall, InvalidInput, UnsupportedFormat
from processor.pipeline.decode.sniff import RECOMMENDED, SNIFF_BYTES, webp_canvas_size

# Once per process: teaches Pillow to open HEIC/HEIF (iPhone photos) through libheif.
pillow_heif.register_heif_opener()

#: Background that transparent pixels are composited on (so they do not turn black).
BACKGROUND_RGB = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SRGB = ImageCms.createProfile("sRGB")
_SRGB_PROFILE = ImageCms.ImageCmsProfile(_SRGB)
#: How colours outside sRGB are brought in (P3's deepest reds, say): relative colorimetric, what
#: browsers and photo viewers use for display, keeps every in-gamut colour exact and clips the rest.
ICC_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC
#: Characters of an ICC profile's description kept (it is the file's text, and it goes in the manifest).
MAX_PROFILE_DESCRIPTION = 120
#: XYZ distance within which a profile's red, green and blue colorants count as sRGB's.
SRGB_COLORANT_TOLERANCE = 0.003

#: Called with the stored width and height once the header passed the size checks, before any
#: pixel is decoded (the isolated child sets its CPU budget from it).
SizeCallback = Callable[[int, int], None]


class PixelLimits(Protocol):
    """The limits the decoder checks the header against (``DecodeSettings`` has them)."""

    @property
    def max_pixels(self) -> int: ...

    @property
    def min_side(self) -> int: ...


@dataclass
class DecodedPixels:
    """A fully loaded 8-bit RGB image, its format, its size as stored and what decode changed."""

    image: Image.Image
    format: str
    source_width: int
    source_height: int
    notes: list[str] = field(default_factory=list)
    #: The description of the embedded ICC profile ("Display P3"), None when there was none or it
    #: could not be read; the pixels are sRGB either way.
    color_profile: str | None = None


def decode_here(data: bytes, fmt: str, limits: PixelLimits, *, where: str = "",
                on_size: SizeCallback | None = None) -> DecodedPixels:
    """Decode ``data``, sniffed as ``fmt``, in this process (``where`` prefixes messages).

    Raises ``ImageTooLarge``, ``ImageTooSmall``, ``UnsupportedFormat`` or ``CorruptImage``, and
    lets ``MemoryError`` through."""
    if fmt == "WEBP":
        # Pillow's WebP plugin builds libwebp's animation decoder on open, which allocates the
        # whole canvas; read the declared size from the RIFF header and check it first.
        declared = webp_canvas_size(data[:SNIFF_BYTES])
        if declared is not None:
            check_size(*declared, limits, where)
    opened = _open_header(data, fmt, where)
    try:
        with _decoder_faults(where, fmt):
            return _decode_opened(opened, fmt, limits, where, on_size)
    finally:
        # Releases the decoder's buffers (and libheif's context) whether we succeeded or not; a
        # plugin that fails to close has nothing left to tell about the pixels already decoded.
        with suppress(Exception):
            opened.close()


def check_size(width: int, height: int, limits: PixelLimits, where: str) -> None:
    """``ImageTooLarge`` / ``ImageTooSmall`` for a declared size outside the limits."""
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


# --- opening the header -------------------------------------------------------------------------


@contextmanager
def _decoder_faults(where: str, fmt: str) -> Iterator[None]:
    """Any exception of a decoder becomes this input's error, keeping the cause."""
    try:
        yield
    except (InvalidInput, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Only reached for sizes Pillow finds outside the header (a GIF frame larger than its
        # screen, say), or when warnings are errors; our own check runs first on the header size.
        raise ImageTooLarge(f"{where}the {fmt} image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # a plugin's fault on these bytes is the input's, never the worker's
        raise CorruptImage(f"{where}the {fmt} file is truncated or damaged ({reason(exc)})") from exc


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
    with _decoder_faults(where, fmt):
        opened = factory(io.BytesIO(data), "")  # "" is what Image.open passes for a file object
    if not isinstance(opened, ImageFile.ImageFile):  # pragma: no cover - every plugin returns one
        raise TypeError(f"Pillow's {fmt} factory returned {type(opened).__name__}")
    return opened


# --- from header to RGB pixels ------------------------------------------------------------------


def _decode_opened(opened: ImageFile.ImageFile, fmt: str, limits: PixelLimits, where: str,
                   on_size: SizeCallback | None) -> DecodedPixels:
    notes: list[str] = []
    width, height = opened.size
    # libheif applies HEIF's rotation while parsing, so the header size is already upright;
    # DecodedPixels wants the stored size, and the note says what happened.
    heif_orientation = opened.info.get("original_orientation") if fmt == "HEIF" else None
    if heif_orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    check_size(width, height, limits, where)
    if on_size is not None:
        on_size(width, height)

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

    icc = opened.info.get("icc_profile")
    image: Image.Image = opened
    if fmt != "HEIF":
        image = _apply_exif_orientation(opened, notes)
    cmyk = image.mode == "CMYK"  # its profile is applied by _cmyk_to_rgb, on the way to RGB
    rgb = _to_rgb(image, fmt, where, notes)
    if rgb is opened:
        # Hand back a plain image, not the file object that still references the input bytes. A
        # new wrapper around the same pixel core, not copy(): a copy doubled decode's peak memory
        # (302 vs 151 MiB over baseline at max_pixels; python -m tests.integration.test_security_memory).
        # close() below only drops the file object's reference to the core.
        rgb = rgb._new(rgb.im)  # noqa: SLF001 - Pillow has no public way to rewrap a core
    profile = _to_srgb(rgb, icc, notes, applied=cmyk) if isinstance(icc, bytes) and icc else None
    # The pixels are sRGB now: the source's profile must not travel on with them into an output.
    rgb.info.pop("icc_profile", None)
    return DecodedPixels(image=rgb, format=fmt, source_width=width, source_height=height, notes=notes,
                         color_profile=profile)


def _to_srgb(rgb: Image.Image, icc: bytes, notes: list[str], *, applied: bool) -> str | None:
    """Convert ``rgb`` (8-bit RGB, in place) from the embedded profile ``icc`` to sRGB, noting
    what was done; the profile's description. ``applied``: the profile was already used (CMYK)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = " ".join(ImageCms.getProfileDescription(source).split())[:MAX_PROFILE_DESCRIPTION] or None
    except Exception as exc:  # noqa: BLE001 - a damaged profile leaves the pixels as they are
        notes.append(f"embedded ICC profile unreadable ({reason(exc)}); colours read as sRGB")
        return None
    name = repr(description) if description else "(no description)"
    space = source.profile.xcolor_space.strip()
    if applied:
        return description
    if space != "RGB":
        notes.append(f"embedded {space} ICC profile {name} not applied (RGB and CMYK profiles are); "
                     f"colours read as sRGB")
        return description
    if _is_srgb(source, description):
        return description
    try:
        transform = ImageCms.buildTransform(source, _SRGB, "RGB", "RGB", renderingIntent=ICC_INTENT)
        ImageCms.applyTransform(rgb, transform, inPlace=True)
    except Exception as exc:  # noqa: BLE001 - a profile LittleCMS cannot use leaves the pixels as they are
        notes.append(f"embedded ICC profile {name} unusable ({reason(exc)}); colours read as sRGB")
        return description
    notes.append(f"converted from the embedded ICC profile {name} to sRGB")
    return description


def _is_srgb(profile: ImageCms.ImageCmsProfile, description: str | None) -> bool:
    """An sRGB profile by name and by primaries: converting it would change nothing but time."""
    if not description or "srgb" not in description.lower():
        return False
    found = (profile.profile.red_colorant, profile.profile.green_colorant, profile.profile.blue_colorant)
    reference = (_SRGB_PROFILE.profile.red_colorant, _SRGB_PROFILE.profile.green_colorant,
                 _SRGB_PROFILE.profile.blue_colorant)
    pairs = list(zip(found, reference, strict=True))
    if any(got is None or want is None for got, want in pairs):  # no colorant tags: not a matrix sRGB
        return False
    return all(abs(a - b) <= SRGB_COLORANT_TOLERANCE
               for got, want in pairs if got is not None and want is not None
               for a, b in zip(got[0], want[0], strict=True))


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` turned upright per its EXIF Orientation tag (1..8), noting what was done."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - whatever the EXIF parser raises, the pixels are intact
        # A damaged EXIF block does not damage the pixels; keep the picture as stored.
        notes.append("exif unreadable; orientation not applied")
        return image
    if orientation in (None, 1):
        return image
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        notes.append(f"ignored invalid exif-orientation {orientation!r}")
        return image
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - it rewrites the EXIF and XMP it carries, which may be damaged
        notes.append("exif unreadable; orientation not applied")
        return image
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
        except Exception:  # noqa: BLE001 - any fault of an embedded profile leaves the naive conversion
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


def reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, for the message of the error that wraps it."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Decode and validate one input before any model sees it.

``decode_image(data, limits)`` turns the bytes of an upload into a fully loaded RGB image, or
raises an ``InvalidInput`` subclass whose message says what is wrong and whose hint says what to
upload instead. The order of checks keeps peak memory bounded by the limits, not by the file, and
CPU time bounded by the decode budget:

1. the byte count (``pipeline.decode.max_bytes``), before anything is parsed;
2. the format, sniffed from magic numbers (the key's extension is never trusted; ``sniff``);
3. the structure (``survey``): a file whose decode cost is proportional to its pixels is decoded
   here; one whose structure can cost far more (thousands of scans, chunks, frames or IFDs; GIF,
   TIFF, HEIF, AVIF) in a child process that stops it at its CPU budget (``isolated``):
   ``pipeline.decode.cpu_floor_s`` plus ``pipeline.decode.cpu_s_per_megapixel`` per megapixel;
4. the header alone, then the pixels (``pixels``), on either path: width x height against
   ``pipeline.decode.max_pixels``, the shorter side against ``pipeline.decode.min_side``, then
   the first frame, EXIF orientation, conversion to 8-bit RGB and from an embedded ICC profile
   to sRGB (the same code on both paths), each change noted.

Every exception of a decoder is the input's: ``CorruptImage`` (or, past the budget,
``DecodeBudgetExceeded``), both final. ``MemoryError`` is the exception: memory runs out because
of what the whole process holds (other items in flight, the models), not only because of this
file, whose pixels the limits already bound; so it is ``StageFailed``, retried on a later scan up to
``run.max_attempts``, and only then final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from processor.errors import ImageTooLarge, StageFailed, UnsupportedFormat
from processor.pipeline.decode.isolated import RETRY_HINT, decode_isolated
from processor.pipeline.decode.pixels import DecodedPixels, decode_here, reason
from processor.pipeline.decode.sniff import (
    RECOMMENDED,
    SNIFF_BYTES,
    describe_unsupported,
    sniff_format,
    webp_canvas_size,
)
from processor.pipeline.decode.survey import DecodeRoute, Survey, survey

if TYPE_CHECKING:
    from processor.config import DecodeSettings
    from processor.pipeline.base import DecodedImage

__all__ = [
    "RECOMMENDED",
    "SNIFF_BYTES",
    "DecodeRoute",
    "DecodedPixels",
    "Survey",
    "decode_here",
    "decode_image",
    "decode_isolated",
    "describe_unsupported",
    "sniff_format",
    "survey",
    "webp_canvas_size",
]


def decode_image(data: bytes, limits: DecodeSettings, *, name: str = "") -> DecodedImage:
    """Decode ``data`` into a validated, fully loaded sRGB image (EXIF orientation applied).

    ``name`` (the object key, say) is used in messages only; the format comes from the bytes.
    Raises ``ImageTooLarge``, ``ImageTooSmall``, ``UnsupportedFormat``, ``CorruptImage`` or
    ``DecodeBudgetExceeded``; ``StageFailed`` when memory ran out.
    """
    # Imported here: the isolated decoder child imports this package, and must start on Pillow
    # alone, without the settings stack that pipeline.base brings.
    from processor.pipeline.base import DecodedImage

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
    plan = survey(data, fmt)
    try:
        if plan.route is DecodeRoute.ISOLATED:
            decoded = decode_isolated(data, fmt, limits, where=where, reason=plan.reason)
        else:
            decoded = decode_here(data, fmt, limits, where=where)
    except MemoryError as exc:
        raise StageFailed(f"{where}decoding the {fmt} file ran out of memory ({reason(exc)})",
                          hint=RETRY_HINT) from exc
    return DecodedImage(image=decoded.image, format=decoded.format, source_width=decoded.source_width,
                        source_height=decoded.source_height, notes=decoded.notes,
                        color_profile=decoded.color_profile)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"

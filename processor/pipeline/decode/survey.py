"""A cheap look at a file's structure that decides where it is decoded: here, or isolated.

Decoding a normal photo costs time in proportion to its pixels, which ``pipeline.decode.max_pixels``
bounds. Some structures cost far more than their pixels, inside every byte and pixel limit: a
progressive JPEG of tens of thousands of tiny scans (libjpeg passes over the whole picture once per
scan: minutes of CPU for a few MiB), tens of thousands of header segments or PNG chunks (each one
parsed by Pillow in Python), a TIFF of thousands of IFDs (Pillow walks them all to count frames,
in time that grows faster than their number), a GIF of a million frames. Such a file is decoded
in a child process under a CPU budget (``isolated``), which stops it; everything else is decoded in
the calling process, which costs nothing extra.

The survey reads markers and chunk headers only, never pixel data, and stops counting as soon as a
file is over a limit, so its own cost is bounded by the limits, not by the file. Formats whose
decoders do work we cannot bound by looking (GIF frame walks, TIFF IFD chains and its many
compressions, the HEIF and AVIF containers with their grids of tiles) are always isolated.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class DecodeRoute(enum.Enum):
    """Where a file is decoded."""

    #: In the calling process: its cost is proportional to its pixels by construction.
    IN_PROCESS = "in-process"
    #: In a child process under the CPU budget (``processor.pipeline.decode.isolated``).
    ISOLATED = "isolated"


@dataclass(frozen=True)
class Survey:
    """Where a file is decoded, and why it is isolated (for the message if its budget runs out)."""

    route: DecodeRoute
    #: Empty for a file decoded in process; e.g. "it holds 40,127 scans" when isolated.
    reason: str = ""


#: Scans a JPEG decoded in process may have. A baseline JPEG has one (three when its components
#: are stored apart); libjpeg's progressive script writes 10 for a colour picture, mozjpeg up to 13.
PLAIN_JPEG_MAX_SCANS = 16
#: Segments before a JPEG's first scan (APPn, COM, DQT, DHT, SOF, ...) for the in-process path.
#: Cameras and phones write 10 to 30 (EXIF, XMP, an ICC profile in pieces, an MPF index).
PLAIN_JPEG_MAX_SEGMENTS = 64
#: PNG chunks any PNG decoded in process may have, whatever its size ...
PLAIN_PNG_MAX_CHUNKS = 64
#: ... plus one per this many bytes of file (libpng writes its image data in 8 KiB chunks).
PLAIN_PNG_BYTES_PER_CHUNK = 4096
#: BMP compressions Pillow decodes in C (none, bit fields, alpha bit fields); its RLE decoders
#: run in Python, a loop per pixel run.
PLAIN_BMP_COMPRESSIONS = frozenset({0, 3, 6})
#: Formats always decoded isolated, and why.
ALWAYS_ISOLATED = {
    "GIF": "GIF frames are walked one by one to count them",
    "TIFF": "TIFF pages (IFDs) are walked one by one, and its compressions vary",
    "HEIF": "HEIF containers may hold grids of many tiles",
    "AVIF": "AVIF containers may hold grids of many tiles",
}

IN_PROCESS = Survey(DecodeRoute.IN_PROCESS)


def survey(data: bytes, fmt: str) -> Survey:
    """Where ``data`` (sniffed as ``fmt``) is decoded. A file too damaged to survey is decoded in
    process when the damage can only make its decoder stop early (a truncated chunk list), and
    isolated when the structure is irregular (bytes between JPEG segments)."""
    if fmt in ALWAYS_ISOLATED:
        return Survey(DecodeRoute.ISOLATED, ALWAYS_ISOLATED[fmt])
    if fmt == "JPEG":
        return _survey_jpeg(data)
    if fmt == "PNG":
        return _survey_png(data)
    if fmt == "BMP":
        return _survey_bmp(data)
    # WebP: libwebp demuxes every frame in C and Pillow decodes the first only (500,000 frames in
    # 25 MB cost 0.16 s here); its canvas size is checked before libwebp sees it.
    return IN_PROCESS


def _survey_jpeg(data: bytes) -> Survey:
    # Entropy-coded data escapes every 0xFF byte (FF 00), so FF DA occurs only as a marker (or in
    # an embedded thumbnail, which only overcounts). A C-speed count, not a Python walk.
    scans = data.count(b"\xff\xda")
    if scans > PLAIN_JPEG_MAX_SCANS:
        return Survey(DecodeRoute.ISOLATED, f"it holds {scans:,} scans (a camera writes 1 to 10)")
    # Pillow parses the segments before the first scan in Python, one at a time.
    pos, segments = 2, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF) or 0xD0 <= data[pos + 1] <= 0xD7:
            return Survey(DecodeRoute.ISOLATED, "its header has bytes between segments")
        if data[pos + 1] in (0xDA, 0xD9):  # start of scan, or an end of image with no scan
            break
        segments += 1
        if segments > PLAIN_JPEG_MAX_SEGMENTS:
            return Survey(DecodeRoute.ISOLATED, f"its header holds more than {PLAIN_JPEG_MAX_SEGMENTS} segments")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return IN_PROCESS


def _survey_png(data: bytes) -> Survey:
    limit = PLAIN_PNG_MAX_CHUNKS + len(data) // PLAIN_PNG_BYTES_PER_CHUNK
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks += 1
        if chunks > limit:
            return Survey(DecodeRoute.ISOLATED, f"it holds more than {limit:,} chunks")
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return IN_PROCESS


def _survey_bmp(data: bytes) -> Survey:
    if len(data) < 34:
        return IN_PROCESS  # too short to hold pixels: Pillow refuses it at once
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size < 40:  # OS/2 1.x: no compression field, always uncompressed
        return IN_PROCESS
    (compression,) = struct.unpack("<I", data[30:34])
    if compression in PLAIN_BMP_COMPRESSIONS:
        return IN_PROCESS
    return Survey(DecodeRoute.ISOLATED, f"it is run-length encoded (BMP compression {compression})")

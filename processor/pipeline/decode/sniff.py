"""What a file is, from its first bytes: the format we decode it as, or what it looks like instead.

The key's extension is never trusted; magic numbers decide. The API sniffs uploads with the same
functions, so a photo refused at the front door would be refused by the worker too.
"""

from __future__ import annotations

import struct

#: Bytes read from the head of a file to sniff its format.
SNIFF_BYTES = 512
#: Characters of an unrecognised file's head quoted in the error message.
PREVIEW_CHARS = 16
#: Formats users are asked for in hints (what we recommend, not all we accept).
RECOMMENDED = "a JPEG, PNG, WebP or HEIC photo"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ISO-BMFF (``ftyp``) brands of HEIF still images (HEVC-coded and generic MIAF).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
GENERIC_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})


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

"""Seeded mutations of valid images, for fuzzing the decoder: every accepted format, damaged in
every way a file gets damaged (flipped bits, a cut, a run of bytes overwritten, a header or chunk
length set to 0 or huge, a chunk duplicated), plus two damaged files crafted by hand.

``mutate(data, sample, seed)`` is a pure function of its arguments: a failure names the sample and
the seed, and ``mutate`` gives back the same bytes to reproduce it.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable

from PIL import Image

from testkit.images import HEIF_ENCODER, encode, photo_image

#: Pixels: the samples' size (above the default min_side of 64, small enough to decode in ~1 ms).
FUZZ_WIDTH, FUZZ_HEIGHT = 96, 72
#: Bytes: the head of a file where "header field" mutations land (format headers, first boxes).
HEADER_SPAN = 96
#: Values a length or size field is set to: zero, one, and huge ones.
FIELD_VALUES = (0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def samples() -> dict[str, bytes]:
    """One small valid file per accepted format and variant (HEIC only where libheif can encode)."""
    photo = photo_image(FUZZ_WIDTH, FUZZ_HEIGHT, seed=21)
    frames = [photo_image(FUZZ_WIDTH, FUZZ_HEIGHT, seed=22 + i) for i in range(3)]
    items: dict[str, bytes | None] = {
        "jpeg-baseline": encode(photo, "JPEG", quality=85),
        "jpeg-progressive": encode(photo, "JPEG", quality=85, progressive=True),
        "png": encode(photo, "PNG"),
        "gif-animated": encode(frames[0].quantize(64), "GIF", save_all=True,
                               append_images=[f.quantize(64) for f in frames[1:]], duration=80, loop=0),
        "webp": encode(photo, "WEBP", quality=80),
        "webp-animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80,
                                lossless=True),
        "tiff": encode(photo, "TIFF"),
        "tiff-multipage": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "avif": encode(photo, "AVIF", quality=50),
        "heic": encode(photo, "HEIF", quality=50) if HEIF_ENCODER else None,
        "bmp": encode(photo, "BMP"),
    }
    return {name: data for name, data in items.items() if data is not None}


# --- mutations ----------------------------------------------------------------------------------

Mutation = Callable[[bytes, random.Random], bytes]
#: ``(start, end, length field offset, its width, byte order)`` of one chunk, segment or box.
Unit = tuple[int, int, int, int, str]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def overwrite_run(data: bytes, rng: random.Random) -> bytes:
    start, length = rng.randrange(len(data)), rng.randint(1, 64)
    fill = rng.choice((0x00, 0xFF, rng.randrange(256)))
    return data[:start] + bytes([fill]) * length + data[start + length :]


def header_field(data: bytes, rng: random.Random) -> bytes:
    """A 2- or 4-byte field near the start (sizes, counts, offsets) set to 0 or huge."""
    width = rng.choice((2, 4))
    start = rng.randrange(0, min(HEADER_SPAN, len(data) - width), width)
    value = rng.choice(FIELD_VALUES) & ((1 << (8 * width)) - 1)
    return data[:start] + value.to_bytes(width, rng.choice(("big", "little"))) + data[start + width :]


def chunk_length(data: bytes, rng: random.Random) -> bytes:
    """One chunk's, segment's or box's own length field set to 0 or huge."""
    spans = units(data)
    if not spans:
        return header_field(data, rng)
    _start, _end, field_at, width, order = rng.choice(spans)
    value = rng.choice(FIELD_VALUES) & ((1 << (8 * width)) - 1)
    return data[:field_at] + value.to_bytes(width, order) + data[field_at + width :]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    """One chunk, segment or box (else a span of bytes) repeated 1 to 64 times in place."""
    spans = units(data)
    if spans:
        start, end, *_ = rng.choice(spans)
    else:
        start = rng.randrange(len(data))
        end = min(len(data), start + rng.randint(4, 256))
    return data[:end] + data[start:end] * rng.randint(1, 64) + data[end:]


MUTATIONS: tuple[Mutation, ...] = (flip_bits, truncate, overwrite_run, header_field, chunk_length, duplicate_chunk)


def mutate(data: bytes, sample: str, seed: int) -> tuple[str, bytes]:
    """``(mutation name, mutated bytes)`` for ``sample``'s bytes and ``seed``: always the same."""
    rng = random.Random(f"{sample}:{seed}")
    mutation = rng.choice(MUTATIONS)
    return mutation.__name__, mutation(data, rng)


def units(data: bytes) -> list[Unit]:
    """The structural units of a file: ``(start, end, length field offset, its width, byte order)``
    of each PNG chunk, JPEG header segment, RIFF chunk or top-level ISO-BMFF box."""
    if data.startswith(b"\x89PNG"):
        return _walk(data, 8, lambda pos: (pos + 12 + int.from_bytes(data[pos : pos + 4], "big"), pos, 4, "big"))
    if data.startswith(b"\xff\xd8"):
        spans = []
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            spans.append((pos, end, pos + 2, 2, "big"))
            pos = end
        return spans
    if data.startswith(b"RIFF"):
        return _walk(data, 12, lambda pos: (pos + 8 + _even(int.from_bytes(data[pos + 4 : pos + 8], "little")),
                                            pos + 4, 4, "little"))
    if data[4:8] == b"ftyp":
        return _walk(data, 0, lambda pos: (pos + max(8, int.from_bytes(data[pos : pos + 4], "big")), pos, 4, "big"))
    return []


def _walk(data: bytes, pos: int, step: Callable[[int], tuple[int, int, int, str]]) -> list[Unit]:
    spans = []
    while pos + 8 <= len(data):
        end, field_at, width, order = step(pos)
        spans.append((pos, min(end, len(data)), field_at, width, order))
        pos = end
    return spans


def _even(n: int) -> int:
    return n + (n & 1)


# --- damaged files crafted by hand --------------------------------------------------------------


def corrupt_avif() -> bytes:
    """A ~500-byte AVIF whose AV1 data is damaged: its container parses, then libavif raises
    ``RuntimeError`` ("Decoding of color planes failed"), which no decoder caught before."""
    data = encode(photo_image(80, 64, seed=4), "AVIF", quality=30)
    mdat = data.index(b"mdat")
    (box_size,) = struct.unpack(">I", data[mdat - 4 : mdat])
    middle = mdat + 4 + (box_size - 8) // 2
    return data[:middle] + b"\x00" * 16 + data[middle + 16 :]


def tiff_second_page_without_size() -> bytes:
    """A 2-page TIFF whose second IFD lacks ImageWidth and ImageLength: counting the pages makes
    Pillow raise ``TypeError`` ("Missing dimensions")."""
    pages = [photo_image(FUZZ_WIDTH, FUZZ_HEIGHT, seed=31 + i) for i in range(2)]
    data = bytearray(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    byte_order = "<" if data[:2] == b"II" else ">"
    (first,) = struct.unpack(byte_order + "I", data[4:8])
    (entries,) = struct.unpack(byte_order + "H", data[first : first + 2])
    (second,) = struct.unpack(byte_order + "I", data[first + 2 + 12 * entries : first + 6 + 12 * entries])
    (entries,) = struct.unpack(byte_order + "H", data[second : second + 2])
    renamed = 0
    for index in range(entries):
        at = second + 2 + 12 * index
        (tag,) = struct.unpack(byte_order + "H", data[at : at + 2])
        if tag in (256, 257):  # ImageWidth, ImageLength: renamed to unknown tags, still in order
            data[at : at + 2] = struct.pack(byte_order + "H", tag - 255)
            renamed += 1
    if renamed != 2:  # pragma: no cover - Pillow writes both tags on every page
        raise RuntimeError("expected ImageWidth and ImageLength in the second IFD")
    return bytes(data)


def pillow_error(data: bytes) -> BaseException | None:
    """What Pillow itself raises opening, counting the frames of and loading ``data`` (None: it
    decodes), to show which exception a crafted file provokes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            _ = getattr(image, "n_frames", 1)
            image.load()
    except Exception as exc:  # noqa: BLE001 - the point is to see whatever it raises
        return exc
    return None

"""Decode-time bombs: small files, inside the byte and pixel limits, that cost far more CPU to
decode than their pixels, one per structure that makes a decoder loop (scans, header segments,
chunks, frames, IFDs). Each is built in memory in well under a second.

The figures in the docstrings are this machine's (2 shared cores), without a budget; a test
proves each is stopped at a budget of a fraction of a second. ``python -m tests.decode_bombs``
prints the table.
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image

from testkit.images import encode

#: Pixels: the side of the JPEG scan bomb (4.2 MP of one grey component: 65,536 blocks a scan).
SCAN_BOMB_SIDE = 2048
#: Pixels: the side of the other bombs, whose cost is in their structure, not their pixels.
SMALL_SIDE = 64


def jpeg_many_scans(scans: int = 30_000, side: int = SCAN_BOMB_SIDE) -> bytes:
    """A progressive JPEG whose AC scan (with its Huffman table) is repeated ``scans`` times:
    libjpeg passes over every block once per scan, each scan a few dozen bytes. 1.2 MB;
    about 13 s of CPU unbounded."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(data)
    for index, (marker, start, end) in enumerate(segments):
        # The first AC scan of the band 6..63: its data is a few bytes of end-of-band runs.
        if marker == 0xDA and data[start + 7] == 6:
            _marker, table_start, _table_end = segments[index - 1]
            unit = data[table_start:end]
            break
    else:  # pragma: no cover - libjpeg's progressive script always has that scan
        raise RuntimeError("no AC scan of band 6..63 in Pillow's progressive JPEG")
    end_of_image = segments[-1][1]
    return data[:end_of_image] + unit * scans + data[end_of_image:]


def jpeg_many_segments(segments: int = 2_000_000) -> bytes:
    """A JPEG with ``segments`` empty comment segments before its frame header: Pillow parses
    each one in Python. 8 MB; about 2.5 s unbounded."""
    data = encode(Image.new("L", (SMALL_SIDE, SMALL_SIDE), 128), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def png_many_chunks(chunks: int = 1_000_000) -> bytes:
    """A PNG with ``chunks`` tiny text chunks before its image data, each one parsed (and its CRC
    checked) by Pillow in Python. 15 MB; about 2.6 s unbounded."""
    data = encode(Image.new("RGB", (SMALL_SIDE, SMALL_SIDE), (10, 200, 30)), "PNG")
    header_end = 8 + 25  # signature + IHDR
    return data[:header_end] + png_chunk(b"tEXt", b"k\x00v") * chunks + data[header_end:]


def gif_many_frames(frames: int = 1_000_000) -> bytes:
    """A GIF of ``frames`` one-pixel frames after two real ones: Pillow walks every frame to count
    them. 23 MB; about 2.6 s unbounded."""
    first = [Image.new("P", (SMALL_SIDE, SMALL_SIDE), colour) for colour in (0, 1)]
    data = encode(first[0], "GIF", save_all=True, append_images=first[1:], duration=10, loop=0)
    frame = (b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control extension
             + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00"  # a 1x1 image descriptor
             + b"\x02\x02\x44\x01\x00")  # its LZW data: one pixel
    return data[:-1] + frame * frames + data[-1:]


def tiff_many_ifds(ifds: int = 40_000) -> bytes:
    """A TIFF of ``ifds`` pages, every IFD pointing at the same strip: Pillow walks the chain to
    count the pages, in time that grows faster than their number. 4.6 MB; about 13 s unbounded."""
    data = bytearray(encode(Image.new("L", (SMALL_SIDE, SMALL_SIDE), 90), "TIFF"))
    (first,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[first : first + 2])
    entries = bytes(data[first + 2 : first + 2 + 12 * count])
    ifd_bytes = 2 + 12 * count + 4
    base = len(data)
    data[first + 2 + 12 * count : first + 6 + 12 * count] = struct.pack("<I", base)
    chain = [
        struct.pack("<H", count) + entries
        + struct.pack("<I", base + (k + 1) * ifd_bytes if k + 1 < ifds else 0)
        for k in range(ifds)
    ]
    return bytes(data) + b"".join(chain)


def apng_many_frames(frames: int = 100_000) -> bytes:
    """An animated PNG of ``frames`` frames (fcTL + fdAT each). Pillow reads the frame count from
    acTL and decodes the first frame only: 15 MB, a few ms. Not a bomb for this decoder."""
    colours = [(200, 100, 50), (40, 100, 50)]
    pictures = [Image.new("RGB", (SMALL_SIDE, SMALL_SIDE), colour) for colour in colours]
    data = encode(pictures[0], "PNG", save_all=True, append_images=pictures[1:], duration=10)
    chunks = list(_png_chunks(data))
    controls = [payload for kind, payload in chunks if kind == b"fcTL"]
    frame_data = next(payload for kind, payload in chunks if kind == b"fdAT")
    out, sequence = [data[:8]], 0
    for kind, payload in chunks:
        if kind in (b"fcTL", b"fdAT", b"IEND"):
            continue
        if kind == b"acTL":
            payload = struct.pack(">II", frames + 1, 0)
        if kind == b"IDAT":
            out.append(png_chunk(b"fcTL", struct.pack(">I", sequence) + controls[0][4:]))
            sequence += 1
        out.append(png_chunk(kind, payload))
    for _ in range(frames):
        out.append(png_chunk(b"fcTL", struct.pack(">I", sequence) + controls[1][4:]))
        out.append(png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + frame_data[4:]))
        sequence += 2
    return b"".join([*out, png_chunk(b"IEND", b"")])


def webp_many_frames(frames: int = 500_000) -> bytes:
    """An animated WebP whose last frame (ANMF) is repeated ``frames`` times. libwebp demuxes them
    in C and Pillow decodes the first only: 25 MB, a fraction of a second. Not a bomb here."""
    pictures = [Image.new("RGB", (SMALL_SIDE, SMALL_SIDE), (i * 40, 100, 50)) for i in range(2)]
    data = encode(pictures[0], "WEBP", save_all=True, append_images=pictures[1:], duration=10, lossless=True)
    pos, frame = 12, b""
    while pos + 8 <= len(data):
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        total = 8 + length + (length & 1)
        if data[pos : pos + 4] == b"ANMF":
            frame = data[pos : pos + total]
        pos += total
    body = data[12:] + frame * frames
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


#: The bombs a decode budget must stop (name -> builder).
BOMBS = {
    "jpeg-many-scans": jpeg_many_scans,
    "jpeg-many-segments": jpeg_many_segments,
    "png-many-chunks": png_many_chunks,
    "gif-many-frames": gif_many_frames,
    "tiff-many-ifds": tiff_many_ifds,
}
#: Files of the same shape that this decoder handles in bounded time (it reads only the first frame).
BOUNDED_BY_DESIGN = {
    "apng-many-frames": apng_many_frames,
    "webp-many-frames": webp_many_frames,
}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        yield data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment; a scan's end includes its entropy-coded data."""
    out, pos = [], 2
    while pos + 2 <= len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((marker, pos, pos + 2))
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if marker == 0xDA:
            # Entropy-coded data runs to the next marker that is not a stuffed 0xFF or a restart.
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, pos, end))
        pos = end
    return out


if __name__ == "__main__":  # the unbounded cost of each, in process (slow: minutes in all)
    import time

    from processor.config import DecodeSettings
    from processor.pipeline.decode import decode_here, sniff_format

    for name, build in {**BOMBS, **BOUNDED_BY_DESIGN}.items():
        bomb = build()
        fmt = sniff_format(bomb[:512]) or "?"
        started = time.process_time()
        try:
            outcome = str(decode_here(bomb, fmt, DecodeSettings(min_side=1)).notes)
        except Exception as exc:  # noqa: BLE001 - printed
            outcome = type(exc).__name__
        print(f"{name}: {len(bomb) / 1e6:.1f} MB, {time.process_time() - started:.2f} CPU s in process, {outcome}")

"""The hostile and odd corpus: every input a user (or an attacker) may drop into ``inputs/``.

Each entry is one object (plus an optional sidecar) and the one outcome the worker must reach:

- ``done``: a committed manifest; ``format`` and ``notes`` say what decode must record;
- ``failed``: a failure record of class ``error`` whose message contains ``words`` (which name
  the problem and, where a limit is involved, the config key to change) and whose hint is set;
- ``refused``: the store itself refuses the key at upload, so it can never reach the worker.

Stores do not agree on every key: SeaweedFS collapses ``//``, drops a leading ``/`` and turns
``\\`` into ``/``, and refuses ``.``/``..`` segments; the local store refuses all of those. An entry
states its outcome per store where they differ (``local=`` / ``s3=``), and ``s3_key`` gives the
key SeaweedFS stores it under. Built from seeds: same corpus on every run.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from testkit.images import (
    PNG_SIGNATURE,
    SMALL_HEIGHT,
    SMALL_WIDTH,
    bad_inputs,
    encode,
    odd_but_valid,
    photo_bytes,
    photo_image,
    png_chunk,
)

#: Bytes: ``pipeline.decode.max_bytes`` of the corpus run (small, so an over-limit file stays cheap).
CORPUS_MAX_BYTES = 400_000
#: Pixels: side of the fully valid PNG bomb (a real zlib stream of zeros, not a header lie).
REAL_BOMB_SIDE = 8_000
#: Bytes: what the text-chunk bombs inflate to (Pillow caps text chunks at MAX_TEXT_CHUNK, 1 MiB).
TEXT_BOMB_BYTES = 64 * 1024 * 1024
#: Nesting depth of the hostile sidecar: deeper than Python's recursion limit, under its byte cap.
SIDECAR_NESTING = 30_000


@dataclass(frozen=True)
class Expect:
    outcome: str  # "done" | "failed" | "refused"
    error: str | None = None
    words: tuple[str, ...] = ()
    format: str | None = None
    notes: tuple[str, ...] = ()
    #: Whether the failure is the photo's own (a final record), or a worker's that another may not have.
    permanent: bool = True


def done(fmt: str, *notes: str) -> Expect:
    return Expect("done", format=fmt, notes=notes)


def failed(error: str, *words: str) -> Expect:
    return Expect("failed", error=error, words=words)


def unavailable(*words: str) -> Expect:
    """A style the worker cannot load: a retryable ``StyleUnavailable`` record, never final."""
    return Expect("failed", error="StyleUnavailable", words=words, permanent=False)


REFUSED = Expect("refused")


@dataclass(frozen=True)
class Entry:
    name: str
    #: The key as the user uploads it.
    key: str
    body: bytes
    expect: Expect
    sidecar: bytes | None = None
    #: Outcome on the local store / on SeaweedFS when it differs from ``expect``.
    local: Expect | None = None
    s3: Expect | None = None
    #: The key SeaweedFS stores the upload under, when it normalises it.
    s3_key: str | None = None
    tags: tuple[str, ...] = field(default=())

    def expect_for(self, store: str) -> Expect:
        override = self.local if store == "local" else self.s3
        return override or self.expect

    def stored_key(self, store: str) -> str:
        return (self.s3_key or self.key) if store == "s3" else self.key


# --- extra hostile files (beyond testkit/images.py) ----------------------------------------------


def real_png_bomb(side: int = REAL_BOMB_SIDE) -> bytes:
    """A fully valid grayscale PNG of ``side`` x ``side`` zeros: 64 MB of pixels in ~60 KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_with_chunk_bomb(kind: bytes) -> bytes:
    """A small valid PNG carrying a ``zTXt`` or ``iCCP`` chunk that inflates to ``TEXT_BOMB_BYTES``."""
    png = photo_bytes(SMALL_WIDTH, SMALL_HEIGHT, "PNG", seed=21)
    compressor = zlib.compressobj(9)
    block = b"\x00" * (1024 * 1024)
    inflated = b"".join(compressor.compress(block) for _ in range(TEXT_BOMB_BYTES // len(block)))
    payload = (b"Comment" if kind == b"zTXt" else b"icc") + b"\x00\x00" + inflated + compressor.flush()
    after_ihdr = len(PNG_SIGNATURE) + 8 + 13 + 4
    return png[:after_ihdr] + png_chunk(kind, payload) + png[after_ihdr:]


def heic_with_declared_size(width: int, height: int) -> bytes | None:
    """A small real HEIC whose ``ispe`` (image spatial extents) box claims ``width`` x ``height``."""
    try:
        data = bytearray(encode(photo_image(SMALL_WIDTH, SMALL_HEIGHT, seed=22), "HEIF", quality=50))
    except (OSError, ValueError, KeyError, RuntimeError):  # no HEVC encoder in this libheif
        return None
    ispe = data.find(b"ispe")
    # ispe box: size(4) 'ispe'(4) version+flags(4) width(4) height(4)
    struct.pack_into(">II", data, ispe + 8, width, height)
    return bytes(data)


def noise_png(width: int, height: int, seed: int = 23) -> bytes:
    """Incompressible pixels: a valid PNG of about ``3 * width * height`` bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "PNG")


def bombs() -> dict[str, bytes]:
    """Every decompression bomb of the corpus, by name (measured for peak memory too)."""
    bad = bad_inputs()
    items: dict[str, bytes | None] = {
        "png-bomb-40000": bad["png-bomb-40000"],
        "png-bomb-real-8000": real_png_bomb(),
        "jpeg-bomb-65000": bad["jpeg-bomb-65000"],
        "gif-bomb-65535": bad["gif-bomb-65535"],
        "webp-bomb-16383": bad["webp-bomb-16383"],
        "heic-bomb-65000": heic_with_declared_size(65_000, 65_000),
        "png-ztxt-bomb": png_with_chunk_bomb(b"zTXt"),
        "png-iccp-bomb": png_with_chunk_bomb(b"iCCP"),
    }
    return {name: data for name, data in items.items() if data is not None}


# --- the corpus --------------------------------------------------------------------------------

#: Expected outcome of every file of ``bad_inputs()`` and ``bombs()``.
_BAD_EXPECT: dict[str, Expect] = {
    "empty": failed("UnsupportedFormat", "empty", "0 bytes"),
    "truncated-jpeg": failed("CorruptImage", "JPEG", "truncated"),
    "truncated-png": failed("CorruptImage", "PNG", "truncated"),
    "truncated-webp": failed("CorruptImage", "WEBP", "truncated or damaged"),
    "png-signature-only": failed("CorruptImage", "PNG", "damaged"),
    "jpeg-garbage-body": failed("CorruptImage", "JPEG", "damaged"),
    "text-as-png": failed("UnsupportedFormat", "it is text, not an image"),
    "html-as-jpg": failed("UnsupportedFormat", "it is HTML"),
    "svg": failed("UnsupportedFormat", "SVG"),
    "pdf": failed("UnsupportedFormat", "PDF document"),
    "mp4": failed("UnsupportedFormat", "not a still image"),
    "random-bytes": failed("UnsupportedFormat", "match no supported image format"),
    "png-bomb-40000": failed("ImageTooLarge", "40000x40000 is 1,600,000,000 px", "(pipeline.decode.max_pixels)"),
    "png-bomb-real-8000": failed("ImageTooLarge", "8000x8000 is 64,000,000 px", "(pipeline.decode.max_pixels)"),
    "jpeg-bomb-65000": failed("ImageTooLarge", "65000x65000", "(pipeline.decode.max_pixels)"),
    "gif-bomb-65535": failed("ImageTooLarge", "65535x65535", "(pipeline.decode.max_pixels)"),
    "webp-bomb-16383": failed("ImageTooLarge", "16383x16383", "(pipeline.decode.max_pixels)"),
    "heic-bomb-65000": failed("ImageTooLarge", "65000x65000", "(pipeline.decode.max_pixels)"),
    # Pillow refuses text chunks that inflate past PngImagePlugin.MAX_TEXT_CHUNK before inflating them.
    "png-ztxt-bomb": failed("CorruptImage", "MAX_TEXT_CHUNK"),
    "png-iccp-bomb": failed("CorruptImage", "MAX_TEXT_CHUNK"),
    "one-pixel": failed("ImageTooSmall", "1x1", "(pipeline.decode.min_side)"),
    "thin-strip": failed("ImageTooSmall", "2000x20", "(pipeline.decode.min_side)"),
}

W, H = SMALL_WIDTH, SMALL_HEIGHT
#: Expected outcome of every file of ``odd_but_valid()``: format and the note decode records.
_ODD_EXPECT: dict[str, Expect] = {
    "png": done("PNG"),
    "webp": done("WEBP"),
    "bmp": done("BMP"),
    "tiff": done("TIFF"),
    "heic": done("HEIF"),
    "avif": done("AVIF"),
    "png-16bit": done("PNG", "scaled 16-bit grayscale (I;16) to 8-bit RGB"),
    "png-16bit-rgb": done("PNG"),
    "cmyk-jpeg": done("JPEG", "converted Adobe-inverted CMYK to RGB"),
    "cmyk-jpeg-no-adobe": done("JPEG", "converted plain (no Adobe marker) CMYK to RGB"),
    "palette-transparent-png": done("PNG", "converted P with transparency to RGB on white"),
    "rgba-png": done("PNG", "converted RGBA to RGB on white"),
    "la-png": done("PNG", "converted LA to RGB on white"),
    "grayscale-jpeg": done("JPEG", "converted L (grayscale) to RGB"),
    "exif-rotated-jpeg": done("JPEG", "exif-orientation 6 applied"),
    "exif-rotated-heic": done("HEIF", "exif-orientation 6 applied (by libheif)"),
    "animated-gif": done("GIF", "first of 3 frames"),
    "animated-webp": done("WEBP", "first of 3 frames"),
}

#: Extension each named file is uploaded with (a lie for the text/HTML ones, on purpose).
_EXTENSIONS = {"text-as-png": ".png", "html-as-jpg": ".jpg", "svg": ".png", "pdf": ".jpg", "mp4": ".jpg",
               "heic": ".heic", "exif-rotated-heic": ".heic", "avif": ".avif", "webp": ".webp",
               "animated-webp": ".webp", "animated-gif": ".gif", "bmp": ".bmp", "tiff": ".tif"}


def _ext(name: str) -> str:
    if name in _EXTENSIONS:
        return _EXTENSIONS[name]
    return ".png" if "png" in name or "pixel" in name or "strip" in name else ".jpg"


def corpus() -> list[Entry]:
    """The whole corpus: files, sidecars and keys. Names are unique; keys are unique per store."""
    entries: list[Entry] = []
    files = {**bad_inputs(), **bombs()}
    for name, body in files.items():
        entries.append(Entry(name, f"inputs/bad/{name}{_ext(name)}", body, _BAD_EXPECT[name]))
    for name, body in odd_but_valid().items():
        entries.append(Entry(name, f"inputs/odd/{name}{_ext(name)}", body, _ODD_EXPECT[name]))

    photo = photo_bytes(SMALL_WIDTH, SMALL_HEIGHT, seed=30)
    entries += [
        Entry(
            "over-byte-limit",
            "inputs/big/noise.png",
            noise_png(400, 400),
            failed("ImageTooLarge", f"limit is {CORPUS_MAX_BYTES:,}", "(pipeline.decode.max_bytes)"),
        ),
        Entry("no-extension", "inputs/odd/no-extension", photo, done("JPEG")),
        Entry("png-named-jpg", "inputs/odd/really-a-png.jpg", photo_bytes(W, H, "PNG", seed=31), done("PNG")),
        # Sidecars: per-image overrides must be valid or the photo fails with the reason.
        Entry("sidecar-valid", "inputs/side/ok.jpg", photo, done("JPEG"), sidecar=b'{"variants": 1, "seed": 3}'),
        Entry(
            "sidecar-invalid-json",
            "inputs/side/broken.jpg",
            photo,
            failed("InvalidSidecar", "side/broken.json", "not valid UTF-8 JSON"),
            sidecar=b'{"variants": 2,,}',
        ),
        Entry(
            "sidecar-unknown-key",
            "inputs/side/typo.jpg",
            photo,
            failed("InvalidSidecar", "colour", "Extra inputs are not permitted"),
            sidecar=b'{"colour": "red"}',
        ),
        Entry(
            "sidecar-bad-value",
            "inputs/side/many.jpg",
            photo,
            failed("InvalidSidecar", "variants", "less than or equal to 16"),
            sidecar=b'{"variants": 1000}',
        ),
        Entry(
            "sidecar-not-object",
            "inputs/side/list.jpg",
            photo,
            failed("InvalidSidecar", "must be a JSON object"),
            sidecar=b"[1, 2, 3]",
        ),
        Entry(
            "sidecar-not-utf8",
            "inputs/side/latin1.jpg",
            photo,
            failed("InvalidSidecar", "not valid UTF-8 JSON"),
            sidecar='{"prompt": "café"}'.encode("latin-1"),
        ),
        Entry(
            "sidecar-too-large",
            "inputs/side/huge.jpg",
            photo,
            failed("InvalidSidecar", "limit is 65,536"),
            sidecar=json.dumps({"prompt": "x" * 70_000}).encode(),
        ),
        Entry(
            "sidecar-deep-nesting",
            "inputs/side/deep.jpg",
            photo,
            failed("InvalidSidecar", "nested too deeply"),
            sidecar=b"[" * SIDECAR_NESTING + b"]" * SIDECAR_NESTING,
        ),
        # Values of any size or sign, and types JSON allows where a count belongs: the bounds are
        # the config's own (a negative seed was a StageFailed counted by the circuit breaker).
        Entry(
            "sidecar-seed-negative",
            "inputs/side/seed-negative.jpg",
            photo,
            failed("InvalidSidecar", "seed", "greater than or equal to 0"),
            sidecar=b'{"seed": -1}',
        ),
        Entry(
            "sidecar-seed-huge",
            "inputs/side/seed-huge.jpg",
            photo,
            failed("InvalidSidecar", "seed", "less than or equal to 4294967295"),
            sidecar=b'{"seed": 1' + b"0" * 30 + b"}",
        ),
        # Python refuses integer literals over 4300 digits with a ValueError, which killed the fetch thread.
        Entry(
            "sidecar-number-5000-digits",
            "inputs/side/digits.jpg",
            photo,
            failed("InvalidSidecar", "number Python will not read"),
            sidecar=b'{"seed": ' + b"9" * 5000 + b"}",
        ),
        Entry(
            "sidecar-nan",
            "inputs/side/nan.jpg",
            photo,
            failed("InvalidSidecar", "variants"),
            sidecar=b'{"variants": NaN}',
        ),
        Entry(
            "sidecar-float-count",
            "inputs/side/float.jpg",
            photo,
            failed("InvalidSidecar", "variants", "valid integer"),
            sidecar=b'{"variants": 1e308}',
        ),
        Entry(
            "sidecar-duplicate-key",
            "inputs/side/dupkey.jpg",
            photo,
            failed("InvalidSidecar", "'seed' twice"),
            sidecar=b'{"seed": 1, "seed": 2}',
        ),
        # The work one input asks for is bounded (run.max_styles_per_input, run.max_variants_per_input).
        Entry(
            "sidecar-duplicate-styles",
            "inputs/side/dupstyle.jpg",
            photo,
            failed("InvalidSidecar", "more than once"),
            sidecar=b'{"styles": ["toon", "toon"]}',
        ),
        Entry(
            "sidecar-too-many-styles",
            "inputs/side/many-styles.jpg",
            photo,
            failed("InvalidSidecar", "run.max_styles_per_input"),
            sidecar=json.dumps({"styles": ["toon"] * 1000}).encode(),
        ),
        Entry(
            "sidecar-over-variant-cap",
            "inputs/side/over-cap.jpg",
            photo,
            failed("InvalidSidecar", "9 variants", "run.max_variants_per_input"),
            sidecar=b'{"variants": 9}',
        ),
        Entry(
            "sidecar-unknown-style",
            "inputs/side/unknown-style.jpg",
            photo,
            failed("InvalidSidecar", "unknown style 'nope'"),
            sidecar=b'{"styles": ["nope"]}',
        ),
        # Styles and background models this worker cannot load: the input waits for a worker that
        # can (a retryable record, the operator's problem); this worker goes on.
        Entry(
            "sidecar-style-model-missing",
            "inputs/side/no-model.jpg",
            photo,
            unavailable("style 'unavailable' cannot run on this worker"),
            sidecar=b'{"styles": ["unavailable"]}',
        ),
        Entry(
            "sidecar-background-model-missing",
            "inputs/side/no-bg-model.jpg",
            photo,
            unavailable("style 'toon' cannot run on this worker", "ModelUnavailableError"),
            sidecar=b'{"background": {"mode": "instruct", "prompt": "a beach"}}',
        ),
        Entry(
            "sidecar-background-needs-model",
            "inputs/side/inpaint.jpg",
            photo,
            failed("InvalidSidecar", "background.model is required"),
            sidecar=b'{"background": {"mode": "inpaint", "prompt": "a beach"}}',
        ),
    ]

    # Keys. Bodies are good photos: the key alone decides the outcome.
    def key_photo(seed: int) -> bytes:
        return photo_bytes(96, 80, seed=100 + seed)

    entries += [
        Entry("key-spaces", "inputs/keys/two  spaces and tab\t.jpg", key_photo(1), done("JPEG")),
        Entry("key-unicode", "inputs/keys/日本/おもちゃ ünï 🧸.jpg", key_photo(2), done("JPEG")),
        Entry("key-unicode-nfd", "inputs/keys/cafe\u0301.jpg", key_photo(3), done("JPEG")),
        Entry("key-percent", "inputs/keys/%2E%2E/%00/pct.jpg", key_photo(4), done("JPEG")),
        Entry("key-three-dots", "inputs/keys/.../dots.jpg", key_photo(5), done("JPEG")),
        Entry("key-dotfile", "inputs/keys/.hidden.jpg", key_photo(6), done("JPEG")),
        Entry("key-newline", "inputs/keys/line\nbreak.jpg", key_photo(7), done("JPEG")),
        Entry("key-long", "inputs/keys/" + "long-" * 40 + ".jpg", key_photo(8), done("JPEG")),
        Entry("key-dotdot", "inputs/../escape.jpg", key_photo(9), REFUSED),
        Entry("key-dotdot-deep", "inputs/keys/../../../../etc/passwd.jpg", key_photo(10), REFUSED),
        Entry("key-dot-segment", "inputs/keys/./here.jpg", key_photo(11), REFUSED),
        Entry("key-double-slash", "inputs/keys//double.jpg", key_photo(12), done("JPEG"),
              local=REFUSED, s3_key="inputs/keys/double.jpg"),
        Entry("key-leading-slash", "/inputs/keys/leading.jpg", key_photo(13), done("JPEG"),
              local=REFUSED, s3_key="inputs/keys/leading.jpg"),
        Entry("key-backslash", "inputs/keys/back\\slash.jpg", key_photo(14), done("JPEG"),
              local=REFUSED, s3_key="inputs/keys/back/slash.jpg"),
        Entry("key-backslash-dotdot", "inputs/keys/..\\..\\evil.jpg", key_photo(15), REFUSED),
        # Names at the file-system limit (255 bytes): derived names (".json", "<etag>.failed") are
        # cut with a hash instead of overflowing it.
        Entry("key-name-255-bytes", "inputs/keys/" + "n" * 251 + ".jpg", key_photo(16), done("JPEG")),
        Entry("key-name-255-bytes-bad", "inputs/keys/" + "b" * 251 + ".jpg", b"",
              failed("UnsupportedFormat", "empty")),
        Entry("key-name-255-bytes-unicode", "inputs/keys/" + "ü" * 125 + ".jpg", key_photo(17), done("JPEG")),
        # A key near S3's 1024-byte limit: derived keys add prefixes and names, so the path is cut.
        Entry("key-path-1000-bytes", "inputs/keys/" + "/".join(["d" * 98] * 10) + ".jpg", key_photo(18),
              done("JPEG")),
        # Two inputs whose results need "outputs/keys/clash/manifest.json" as a file and as a folder:
        # fine in a bucket, impossible on a file system, where the second gets a failure record.
        Entry("key-folder-clash-first", "inputs/keys/clash.jpg", key_photo(19), done("JPEG")),
        Entry("key-folder-clash-second", "inputs/keys/clash/manifest.json.jpg", key_photo(20), done("JPEG"),
              local=failed("InvalidInput", "its results cannot be stored", "collides with an object or folder")),
    ]
    return entries

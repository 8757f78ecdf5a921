"""Decode & validate: hostile inputs are refused with a reason and a hint, odd valid ones decode."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageFile

from processor.config import DecodeSettings
from processor.errors import CorruptImage, ImageTooLarge, ImageTooSmall, InvalidInput, UnsupportedFormat
from processor.pipeline.base import DecodedImage
from processor.pipeline.decode import decode_image, sniff_format, webp_canvas_size
from testkit.images import (
    BOMB_SIDE,
    SMALL_HEIGHT,
    SMALL_WIDTH,
    bad_inputs,
    encode,
    gray16_gradient,
    photo_bytes,
    photo_image,
    png_bomb,
)

LIMITS = DecodeSettings()
#: Bytes: the most Python-side memory decoding a bomb may trace (its header is all we read).
BOMB_PEAK_BYTES = 2 * 1024 * 1024

BAD = bad_inputs()
# What each hostile input must raise, and words its message must contain.
BAD_EXPECTED: dict[str, tuple[type[InvalidInput], tuple[str, ...]]] = {
    "empty": (UnsupportedFormat, ("empty", "0 bytes")),
    "truncated-jpeg": (CorruptImage, ("JPEG", "truncated")),
    "truncated-png": (CorruptImage, ("PNG", "truncated")),
    "truncated-webp": (CorruptImage, ("WEBP", "truncated or damaged")),
    "png-signature-only": (CorruptImage, ("PNG", "damaged")),
    "jpeg-garbage-body": (CorruptImage, ("JPEG", "damaged")),
    "text-as-png": (UnsupportedFormat, ("'This is not a pi'", "it is text, not an image")),
    "html-as-jpg": (UnsupportedFormat, ("'<!DOCTYPE html", "it is HTML")),
    "svg": (UnsupportedFormat, ("SVG",)),
    "pdf": (UnsupportedFormat, ("'%PDF", "PDF document")),
    "mp4": (UnsupportedFormat, ("'isom'", "not a still image")),
    "random-bytes": (UnsupportedFormat, ("match no supported image format",)),
    "png-bomb-40000": (
        ImageTooLarge,
        ("40000x40000 is 1,600,000,000 px; limit is 40,000,000 (pipeline.decode.max_pixels)",),
    ),
    "jpeg-bomb-65000": (ImageTooLarge, ("65000x65000 is 4,225,000,000 px", "pipeline.decode.max_pixels")),
    "gif-bomb-65535": (ImageTooLarge, ("65535x65535", "pipeline.decode.max_pixels")),
    "webp-bomb-16383": (ImageTooLarge, ("16383x16383 is 268,402,689 px", "pipeline.decode.max_pixels")),
    "one-pixel": (ImageTooSmall, ("1x1", "1 px", "minimum is 64 (pipeline.decode.min_side)")),
    "thin-strip": (ImageTooSmall, ("2000x20", "20 px", "minimum is 64 (pipeline.decode.min_side)")),
}

W, H = SMALL_WIDTH, SMALL_HEIGHT
# Sniffed format, decoded size and the note decode must record (None: no note expected).
VALID_EXPECTED: dict[str, tuple[str, tuple[int, int], str | None]] = {
    "png": ("PNG", (W, H), None),
    "webp": ("WEBP", (W, H), None),
    "bmp": ("BMP", (W, H), None),
    "tiff": ("TIFF", (W, H), None),
    "heic": ("HEIF", (W, H), None),
    "avif": ("AVIF", (W, H), None),
    "png-16bit": ("PNG", (W, H), "scaled 16-bit grayscale (I;16) to 8-bit RGB"),
    "png-16bit-rgb": ("PNG", (W, H), None),  # Pillow itself keeps the high byte of each sample
    "cmyk-jpeg": ("JPEG", (W, H), "converted Adobe-inverted CMYK to RGB"),
    "cmyk-jpeg-no-adobe": ("JPEG", (W, H), "converted plain (no Adobe marker) CMYK to RGB"),
    "palette-transparent-png": ("PNG", (W, H), "converted P with transparency to RGB on white"),
    "rgba-png": ("PNG", (W, H), "converted RGBA to RGB on white"),
    "la-png": ("PNG", (W, H), "converted LA to RGB on white"),
    "grayscale-jpeg": ("JPEG", (W, H), "converted L (grayscale) to RGB"),
    "exif-rotated-jpeg": ("JPEG", (H, W), "exif-orientation 6 applied"),
    "exif-rotated-heic": ("HEIF", (H, W), "exif-orientation 6 applied (by libheif)"),
    "animated-gif": ("GIF", (W, H), "first of 3 frames"),
    "animated-webp": ("WEBP", (W, H), "first of 3 frames"),
}


@pytest.fixture(scope="module")
def odd() -> dict[str, bytes]:
    from testkit.images import odd_but_valid

    return odd_but_valid()


def _odd_item(odd: dict[str, bytes], name: str) -> bytes:
    if name not in odd:
        pytest.skip(f"{name}: no encoder for it in this environment")
    return odd[name]


def _pillow_images_created() -> int:
    """How many image buffers Pillow's C core has allocated in this process so far."""
    return int(Image.core.get_stats()["new_count"])  # type: ignore[attr-defined]


# --- hostile inputs ----------------------------------------------------------------------------


def test_every_bad_input_has_an_expectation() -> None:
    assert set(BAD) == set(BAD_EXPECTED)


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_bad_input_is_refused_with_reason_and_hint(name: str) -> None:
    error_type, words = BAD_EXPECTED[name]
    with pytest.raises(InvalidInput) as caught:
        decode_image(BAD[name], LIMITS, name=f"inputs/{name}.jpg")
    error = caught.value
    assert type(error) is error_type, f"{name}: {type(error).__name__}: {error}"
    message = str(error)
    assert message.startswith(f"inputs/{name}.jpg: ")
    for word in words:
        assert word in message
    assert error.hint.strip()


@pytest.mark.parametrize("name", ["truncated-jpeg", "truncated-png", "truncated-webp", "jpeg-garbage-body"])
def test_corrupt_image_keeps_pillow_cause(name: str) -> None:
    with pytest.raises(CorruptImage) as caught:
        decode_image(BAD[name], LIMITS)
    assert isinstance(caught.value.__cause__, (OSError, SyntaxError, ValueError, EOFError))


def test_truncated_jpeg_is_not_loaded_half_grey() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(CorruptImage):
        decode_image(BAD["truncated-jpeg"], LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_is_refused_from_the_header_without_allocating() -> None:
    before = _pillow_images_created()
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge):
            decode_image(png_bomb(), LIMITS)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # tracemalloc sees Python and numpy allocations; Pillow's C image memory is counted by its stats.
    assert peak < BOMB_PEAK_BYTES
    assert _pillow_images_created() == before


def test_webp_bomb_is_refused_before_libwebp_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoder(*_args: object) -> None:
        raise AssertionError("the WebP decoder was created for a bomb")

    Image.init()
    _factory, accept = Image.OPEN["WEBP"]
    monkeypatch.setitem(Image.OPEN, "WEBP", (no_decoder, accept))
    with pytest.raises(ImageTooLarge, match="16383x16383"):
        decode_image(BAD["webp-bomb-16383"], LIMITS)


def test_webp_header_size_matches_pillow(odd: dict[str, bytes]) -> None:
    for name in ("webp", "animated-webp"):
        assert webp_canvas_size(odd[name][:64]) == (W, H)
    lossless = encode(photo_image(96, 72), "WEBP", lossless=True)
    assert lossless[12:16] == b"VP8L" and webp_canvas_size(lossless[:64]) == (96, 72)
    assert odd["webp"][12:16] == b"VP8 "


def test_bomb_is_refused_even_with_pillows_guard_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLarge, match=f"{BOMB_SIDE}x{BOMB_SIDE}"):
        decode_image(png_bomb(), LIMITS)


def test_pixel_limit_comes_from_config_not_pillow() -> None:
    data = photo_bytes(640, 480, "PNG")
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(data, DecodeSettings(max_pixels=100_000))
    assert str(caught.value) == "640x480 is 307,200 px; limit is 100,000 (pipeline.decode.max_pixels)"
    assert decode_image(data, DecodeSettings(max_pixels=640 * 480)).image.size == (640, 480)


def test_byte_cap_is_checked_before_parsing() -> None:
    data = photo_bytes(320, 240, "PNG")
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(data, DecodeSettings(max_bytes=len(data) - 1), name="big.png")
    message = str(caught.value)
    assert f"{len(data):,} bytes" in message
    assert f"limit is {len(data) - 1:,}" in message
    assert "(pipeline.decode.max_bytes)" in message
    assert decode_image(data, DecodeSettings(max_bytes=len(data))).image.size == (320, 240)
    # Even garbage is refused on size alone, before anyone looks at it.
    with pytest.raises(ImageTooLarge):
        decode_image(b"\x00" * 100, DecodeSettings(max_bytes=99))


@pytest.mark.parametrize(
    ("size", "min_side", "ok"), [((200, 40), 64, False), ((200, 64), 64, True), ((64, 200), 65, False)]
)
def test_min_side(size: tuple[int, int], min_side: int, ok: bool) -> None:
    data = photo_bytes(*size, fmt="PNG")
    limits = DecodeSettings(min_side=min_side)
    if ok:
        assert decode_image(data, limits).image.size == size
        return
    with pytest.raises(ImageTooSmall) as caught:
        decode_image(data, limits)
    message = str(caught.value)
    assert f"{size[0]}x{size[1]}" in message
    assert f"minimum is {min_side} (pipeline.decode.min_side)" in message


# --- odd but valid inputs ----------------------------------------------------------------------


def test_every_valid_input_has_an_expectation(odd: dict[str, bytes]) -> None:
    assert set(odd) <= set(VALID_EXPECTED)


@pytest.mark.parametrize("name", sorted(VALID_EXPECTED))
def test_odd_but_valid_input_decodes_to_rgb(odd: dict[str, bytes], name: str) -> None:
    fmt, size, note = VALID_EXPECTED[name]
    decoded = decode_image(_odd_item(odd, name), LIMITS, name=name)
    assert isinstance(decoded, DecodedImage)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == size
    assert (decoded.source_width, decoded.source_height) == (W, H)  # as stored, before rotation
    assert decoded.format == fmt
    if note is None:
        assert decoded.notes == []
    else:
        assert note in decoded.notes
    # Fully loaded, detached from the input bytes.
    assert not isinstance(decoded.image, ImageFile.ImageFile)
    decoded.image.getpixel((0, 0))


@pytest.mark.parametrize("name", ["rgba-png", "la-png", "palette-transparent-png"])
def test_transparent_areas_become_white_not_black(odd: dict[str, bytes], name: str) -> None:
    pixels = np.asarray(decode_image(odd[name], LIMITS).image)
    assert (pixels[0, 0] == 255).all()  # the frame was alpha 0 over black
    assert (pixels[H // 2, W // 2] < 250).any()  # the opaque centre keeps the picture


def test_sixteen_bit_gray_is_scaled_not_clipped(odd: dict[str, bytes]) -> None:
    row = np.asarray(decode_image(odd["png-16bit"], LIMITS).image)[H // 2, :, 0].astype(int)
    expected = np.asarray(gray16_gradient(W, 1))[0].astype(int) >> 8
    assert row[0] == 0 and row[-1] == 255
    assert np.abs(row - expected).max() <= 1
    assert np.all(np.diff(row) >= 0)


@pytest.mark.parametrize("name", ["cmyk-jpeg", "cmyk-jpeg-no-adobe"])
def test_cmyk_jpeg_colours_are_not_inverted(odd: dict[str, bytes], name: str) -> None:
    seed = 11 if name == "cmyk-jpeg" else 7  # the seeds images.py drew these photos with
    decoded = np.asarray(decode_image(odd[name], LIMITS).image).astype(int)
    original = np.asarray(photo_image(W, H, seed=seed)).astype(int)
    assert np.abs(decoded - original).mean() < 8


def test_cmyk_with_unusable_icc_profile_falls_back() -> None:
    data = encode(photo_image(W, H).convert("CMYK"), "JPEG", icc_profile=b"not an icc profile" * 8)
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    assert any("ICC profile unusable" in note for note in decoded.notes)


def test_exif_rotation_turns_the_picture(odd: dict[str, bytes]) -> None:
    stored = photo_image(W, H, seed=6)
    upright = np.asarray(stored.transpose(Image.Transpose.ROTATE_270)).astype(int)
    decoded = np.asarray(decode_image(odd["exif-rotated-jpeg"], LIMITS).image).astype(int)
    assert np.abs(decoded - upright).mean() < 8


# --- sniffing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_format_is_sniffed_from_bytes_not_name(fmt: str) -> None:
    data = photo_bytes(96, 64, fmt)
    decoded = decode_image(data, LIMITS, name="photo.heic")
    assert decoded.format == fmt
    assert decoded.image.size == (96, 64)
    assert sniff_format(data[:64]) == fmt


def test_png_named_jpg_decodes() -> None:
    assert decode_image(photo_bytes(96, 64, "PNG"), LIMITS, name="toy.jpg").format == "PNG"


def test_name_is_only_for_messages() -> None:
    with pytest.raises(UnsupportedFormat, match=r"^inputs/a b/ü\.png: "):
        decode_image(b"hello", LIMITS, name="inputs/a b/ü.png")
    with pytest.raises(UnsupportedFormat, match=r"^the file starts with 'hello'"):
        decode_image(b"hello", LIMITS)

"""Output encoders: A1111 parameter text, PNG round trip, contact sheets, digests."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from processor.pipeline.encode import (
    CONTACT_SHEET_GAP,
    CONTACT_SHEET_MAX_COLUMNS,
    a1111_parameters,
    contact_sheet,
    encode_png,
    sha256_hex,
)
from testkit.images import photo_bytes, photo_image

# A1111's own infotext field pattern (modules/infotext_utils.py, ``re_param_code``).
A1111_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

TOON_PARAMETERS = {
    "colors": 9,
    "smoothing": 2,
    "edge_width": 3,
    "engine": "toon",
    "style": "toon",
    "seed": 3,
    "max_side": 1024,
    "working_size": "64x48",
}


def parse_last_line(text: str) -> dict[str, str]:
    return {key: value for key, value in A1111_FIELD.findall(text.splitlines()[-1])}


def test_a1111_text_for_toon_parameters() -> None:
    text = a1111_parameters(TOON_PARAMETERS, 64, 48)
    prompt, fields = text.split("\n")
    assert prompt == "toon cartoon"
    assert fields.startswith("Steps: 0, Seed: 3, Size: 64x48, ")
    parsed = parse_last_line(text)
    assert parsed["Colors"] == "9"
    assert parsed["Edge width"] == "3"
    assert parsed["Engine"] == "toon"
    assert parsed["Working size"] == "64x48"


def test_a1111_known_keys_first_in_a1111_order() -> None:
    text = a1111_parameters(
        {
            "lora": "toy-v1",
            "model": "stabilityai/sdxl",
            "seed": 42,
            "guidance": 7.5,
            "scheduler": "Karras",
            "sampler": "DPM++ 2M",
            "steps": 30,
            "negative": "blurry, photo",
            "prompt": "a red plush cow, pixar style",
            "strength": 0.55,
            "unused": None,
        },
        768,
        512,
    )
    lines = text.split("\n")
    assert lines[0] == "a red plush cow, pixar style"
    assert lines[1] == "Negative prompt: blurry, photo"
    assert lines[2] == (
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 768x512, "
        "Model: stabilityai/sdxl, Lora: toy-v1, Strength: 0.55"
    )
    assert "Unused" not in text


def test_a1111_values_with_separators_are_quoted() -> None:
    text = a1111_parameters({"note": "a, b: c", "palette": [1, 2]}, 8, 8)
    parsed = parse_last_line(text)
    assert parsed["Note"] == '"a, b: c"'
    assert parsed["Palette"] == '"[1,2]"'
    assert a1111_parameters({"guidance": 7.0}, 8, 8).endswith("CFG scale: 7, Size: 8x8")


def test_png_round_trip_keeps_pixels_and_parameters() -> None:
    image = photo_image(64, 48, seed=2)
    data = encode_png(image, TOON_PARAMETERS)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as read:
        text = read.text["parameters"]
        assert read.size == (64, 48)
        assert np.array_equal(np.asarray(read.convert("RGB")), np.asarray(image))
    assert "Seed: 3" in text and "Size: 64x48" in text
    assert text == a1111_parameters(TOON_PARAMETERS, 64, 48)


def test_png_with_non_latin_text_round_trips() -> None:
    data = encode_png(Image.new("RGB", (8, 8)), {"prompt": "玩具の牛, 🐄", "seed": 1})
    with Image.open(io.BytesIO(data)) as read:
        assert read.text["parameters"].startswith("玩具の牛, 🐄\n")


def test_png_bytes_are_deterministic() -> None:
    image = photo_image(64, 48, seed=4)
    assert encode_png(image, TOON_PARAMETERS) == encode_png(image.copy(), dict(TOON_PARAMETERS))



def test_png_compress_level_trades_size_for_speed_without_changing_pixels() -> None:
    image = photo_image(256, 192, seed=4)
    fast = encode_png(image, TOON_PARAMETERS, compress_level=1)
    small = encode_png(image, TOON_PARAMETERS, compress_level=9)
    assert len(small) < len(fast)
    assert fast == encode_png(image, TOON_PARAMETERS, compress_level=1)  # still deterministic
    for data in (fast, small):
        with Image.open(io.BytesIO(data)) as read:
            assert np.array_equal(np.asarray(read.convert("RGB")), np.asarray(image))


def test_worker_writes_variants_at_the_configured_png_level(tmp_path) -> None:
    from processor.queue.keys import KeyLayout
    from processor.store.local import LocalStore
    from tests.unit.test_worker import make_settings, make_worker

    sizes = {}
    for level in (0, 9):
        (tmp_path / str(level)).mkdir()
        settings = make_settings(tmp_path / str(level))
        settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(
            update={"png_compress_level": level})})
        store = LocalStore(settings.store.root)
        store.put("inputs/a.jpg", photo_bytes(160, 120, seed=2))
        assert make_worker(store, settings).run_once() == 0
        key = KeyLayout(settings.prefixes).for_input("inputs/a.jpg").variant("toon", 0)
        sizes[level] = len(store.get(key).body)
    assert sizes[9] < sizes[0]

def tile_width(size: tuple[int, int], height: int) -> int:
    return max(1, round(size[0] * height / size[1]))


def test_contact_sheet_is_one_row_jpeg_of_scaled_tiles() -> None:
    original = photo_image(160, 120, seed=5)
    variants = [photo_image(120, 160, seed=6), photo_image(200, 100, seed=7), photo_image(90, 90, seed=8)]
    height = 64
    data = contact_sheet(original, variants, height=height, labels=["original", "a", "b", "a long label here"])
    expected_tiles = sum(tile_width(im.size, height) for im in [original, *variants])
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.format == "JPEG"
        gaps = CONTACT_SHEET_GAP * (len(variants) + 2)
        assert sheet.width == expected_tiles + gaps
        assert height < sheet.height < 2 * height  # one row plus its label strip
    assert contact_sheet(original, variants, height=height) == contact_sheet(original, variants, height=height)


def test_contact_sheet_wraps_rows() -> None:
    original = photo_image(80, 60, seed=1)
    variants = [photo_image(80, 60, seed=i) for i in range(CONTACT_SHEET_MAX_COLUMNS + 1)]
    height = 48
    with Image.open(io.BytesIO(contact_sheet(original, variants, height=height))) as sheet:
        row = CONTACT_SHEET_MAX_COLUMNS * (tile_width((80, 60), height) + CONTACT_SHEET_GAP) + CONTACT_SHEET_GAP
        assert sheet.width == row
        assert sheet.height > 2 * height


def test_contact_sheet_rejects_wrong_label_count() -> None:
    with pytest.raises(ValueError, match="2 labels for 3 tiles"):
        contact_sheet(Image.new("RGB", (8, 8)), [Image.new("RGB", (8, 8))] * 2, height=32, labels=["a", "b"])


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_outputs_are_tagged_srgb_and_stay_deterministic() -> None:
    """A variant PNG carries the sRGB chunk (never a profile left in the picture's info: decode
    converted the pixels to sRGB); a contact sheet JPEG carries the sRGB ICC profile, with no
    creation time in it, so equal inputs still give equal bytes."""
    from PIL import ImageCms

    from processor.pipeline.encode import encode_jpeg, srgb_icc_profile

    image = photo_image(64, 48)
    image.info["icc_profile"] = b"a stale profile of the source"
    png = Image.open(io.BytesIO(encode_png(image, TOON_PARAMETERS)))
    assert png.info.get("srgb") == 0 and "icc_profile" not in png.info
    sheet = contact_sheet(image, [image], height=32)
    assert sheet == contact_sheet(image, [image], height=32)
    embedded = Image.open(io.BytesIO(sheet)).info["icc_profile"]
    assert embedded == srgb_icc_profile() and embedded[24:36] == bytes(12)
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(embedded))).startswith("sRGB")
    assert Image.open(io.BytesIO(encode_jpeg(image))).info["icc_profile"] == embedded

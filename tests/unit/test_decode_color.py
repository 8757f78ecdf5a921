"""Colour management on decode: an embedded RGB ICC profile (Display P3 from a phone, Adobe RGB
from a camera) is converted to sRGB before anything sees the pixels, on both decode paths (in
process, and in the isolated child for TIFF and HEIF); the profile's description is kept; a
profile that cannot be used is a note, never a failure; EXIF orientation still applies. The
profiles are built in memory (``testkit.icc``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from processor.config import DecodeSettings
from processor.pipeline.decode import DecodeRoute, decode_image, sniff_format, survey
from testkit.icc import ADOBE_RGB, DISPLAY_P3, SRGB
from testkit.images import EXIF_ORIENTATION, HEIF_ENCODER, encode, photo_image

LIMITS = DecodeSettings()
W, H = 160, 120


def saturated_photo() -> Image.Image:
    """A toy photo with colours P3 and sRGB read differently (saturated red, green, blue)."""
    image = photo_image(W, H, seed=3)
    pixels = np.asarray(image).copy()
    pixels[10:40, 10:60] = (230, 30, 40)
    pixels[10:40, 70:120] = (40, 200, 60)
    pixels[50:80, 10:60] = (30, 60, 220)
    return Image.fromarray(pixels, "RGB")


def to_srgb(image: Image.Image, profile: bytes) -> np.ndarray:
    """What the picture looks like in sRGB: LittleCMS, relative colorimetric."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                          renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    assert converted is not None
    return np.asarray(converted, np.int16)


@pytest.mark.parametrize("fmt,route", [("PNG", DecodeRoute.IN_PROCESS), ("TIFF", DecodeRoute.ISOLATED),
                                       ("WEBP", DecodeRoute.IN_PROCESS)])
def test_display_p3_becomes_srgb_on_both_paths(fmt, route):
    photo = saturated_photo()
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(photo, fmt, icc_profile=DISPLAY_P3, **options)
    assert survey(data, sniff_format(data[:64]) or "").route is route
    decoded = decode_image(data, LIMITS)
    got = np.asarray(decoded.image, np.int16)
    assert np.abs(got - to_srgb(photo, DISPLAY_P3)).max() <= 1
    assert np.abs(got - np.asarray(photo, np.int16)).mean() > 3  # it did change: P3 is not sRGB
    assert decoded.color_profile == "Display P3"
    assert "converted from the embedded ICC profile 'Display P3' to sRGB" in decoded.notes
    assert "icc_profile" not in decoded.image.info  # no stale profile travels on into an output


def test_adobe_rgb_jpeg_with_exif_orientation_is_turned_and_converted():
    photo = saturated_photo()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = encode(photo, "JPEG", quality=100, icc_profile=ADOBE_RGB, exif=exif.tobytes())
    decoded = decode_image(data, LIMITS)
    assert decoded.image.size == (H, W) and decoded.color_profile == "Adobe RGB (1998)"
    assert decoded.notes == ["exif-orientation 6 applied",
                             "converted from the embedded ICC profile 'Adobe RGB (1998)' to sRGB"]
    # The reference: the same JPEG's own pixels, turned, then converted.
    upright = Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.abs(np.asarray(decoded.image, np.int16) - to_srgb(upright, ADOBE_RGB)).max() <= 1


@pytest.mark.skipif(HEIF_ENCODER is None, reason="pillow-heif has no HEIF encoder here")
def test_a_display_p3_heic_like_a_phones_is_converted():
    photo = saturated_photo()
    buffer = io.BytesIO()
    photo.save(buffer, format="HEIF", quality=-1, icc_profile=DISPLAY_P3)  # quality -1: lossless
    decoded = decode_image(buffer.getvalue(), LIMITS)
    assert decoded.format == "HEIF" and decoded.color_profile == "Display P3"
    assert np.abs(np.asarray(decoded.image, np.int16) - to_srgb(photo, DISPLAY_P3)).mean() < 3


def test_an_srgb_profile_is_recorded_and_left_alone():
    photo = saturated_photo()
    decoded = decode_image(encode(photo, "PNG", icc_profile=SRGB), LIMITS)
    assert decoded.color_profile == "sRGB built for tests" and decoded.notes == []
    assert np.array_equal(np.asarray(decoded.image), np.asarray(photo))


@pytest.mark.parametrize("profile,note", [
    (b"this is not an ICC profile at all" * 4, "embedded ICC profile unreadable"),
    (DISPLAY_P3[:200], "embedded ICC profile unreadable"),  # cut short
])
def test_a_broken_profile_is_a_note_not_a_failure(profile, note):
    photo = saturated_photo()
    decoded = decode_image(encode(photo, "PNG", icc_profile=profile), LIMITS)
    assert decoded.color_profile is None and any(n.startswith(note) for n in decoded.notes), decoded.notes
    assert any(n.endswith("colours read as sRGB") for n in decoded.notes)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(photo))


def test_a_grey_profile_on_a_grey_photo_is_named_and_not_applied():
    grey = saturated_photo().convert("L")
    gray_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not RGB: cannot apply
    decoded = decode_image(encode(grey, "PNG", icc_profile=gray_profile), LIMITS)
    assert decoded.image.mode == "RGB"
    assert any("ICC profile" in n and "not applied" in n for n in decoded.notes), decoded.notes


def test_no_profile_no_change():
    photo = saturated_photo()
    decoded = decode_image(encode(photo, "PNG"), LIMITS)
    assert decoded.color_profile is None and decoded.notes == []
    assert np.array_equal(np.asarray(decoded.image), np.asarray(photo))


# --------------------------------------------------------------------------- through the worker


def test_a_display_p3_photo_gives_the_variants_of_its_srgb_self(tmp_path):
    """A real worker run with the toon style over three uploads of one picture: tagged Display
    P3; converted to sRGB first (untagged); and its P3 numbers read as sRGB (untagged, what decode
    did before). The first two give the same variants; the third, the old mistake, does not."""
    import json

    from processor.cli.compose import build_registry
    from processor.config import load_settings
    from processor.manifest import Manifest
    from processor.queue.keys import KeyLayout
    from processor.store.local import LocalStore
    from processor.worker.runner import Worker

    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")},
           "run": {"styles": ["toon"], "poll_interval_s": 0.05},
           "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 320, "seed": 5}},
           "pipeline": {"contact_sheet_height": 64}}
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))
    settings = load_settings(tmp_path / "config.yaml")
    store = LocalStore(settings.store.root)
    photo = saturated_photo().resize((320, 240), Image.Resampling.BICUBIC)
    store.put("inputs/p3.png", encode(photo, "PNG", icc_profile=DISPLAY_P3))
    store.put("inputs/srgb.png", encode(Image.fromarray(to_srgb(photo, DISPLAY_P3).astype(np.uint8)), "PNG"))
    store.put("inputs/naive.png", encode(photo, "PNG"))
    worker = Worker(store, settings, build_registry(settings), worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0

    layout = KeyLayout(settings.prefixes)

    def variants(key: str) -> tuple[Manifest, list[np.ndarray]]:
        manifest = Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)
        pictures = [Image.open(io.BytesIO(store.get(v.key).body)) for v in manifest.variants]
        assert all(p.info.get("srgb") == 0 for p in pictures)  # tagged sRGB
        return manifest, [np.asarray(p.convert("RGB"), np.int16) for p in pictures]

    p3, from_p3 = variants("inputs/p3.png")
    srgb, from_srgb = variants("inputs/srgb.png")
    _, from_naive = variants("inputs/naive.png")
    assert p3.source.color_profile == "Display P3" and srgb.source.color_profile is None
    assert "converted from the embedded ICC profile 'Display P3' to sRGB" in p3.source.notes
    for a, b, naive in zip(from_p3, from_srgb, from_naive, strict=True):
        assert np.abs(a - b).mean() <= 2.0
        assert np.abs(naive - b).mean() > 2.0
    assert p3.contact_sheet is not None
    sheet = Image.open(io.BytesIO(store.get(p3.contact_sheet).body))
    embedded = ImageCms.ImageCmsProfile(io.BytesIO(sheet.info["icc_profile"]))
    assert ImageCms.getProfileDescription(embedded).startswith("sRGB")

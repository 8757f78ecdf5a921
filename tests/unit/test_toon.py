"""The toon engine: variant count, visible differences, sizes, determinism, recorded parameters."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from processor.config import ToonStyle
from processor.pipeline.base import VariantImage
from processor.pipeline.encode import encode_png
from processor.pipeline.toon import PALETTE_ORDER, TONE_LEVELS, ToonEngine, draw_parameters
from testkit.images import photo_image

#: Mean absolute difference (0-255 per channel) two variants must exceed to count as "visibly
#: different" (real toy photos measure 5-11 between default variants).
MIN_VARIANT_DIFFERENCE = 4.0
#: Mean absolute difference every two variants of the default style must exceed to be a real choice
#: (a different palette, tone levels or line weight): variants that differed only by chance measured
#: 2.4 to 4.1 on a 1024 px test photo (bench: the toon speed command in docs/styles.md), ones that
#: differ on purpose 15.6 to 38.3; 10 is well clear of both.
MIN_CHOICE_DIFFERENCE = 10.0
#: Mean absolute difference a cartoon must exceed against its input (flattening + lines change a lot).
MIN_INPUT_DIFFERENCE = 8.0


def rich_photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A colourful synthetic photo: hue sweep left to right, saturation/brightness top to bottom,
    grain, and outlined discs. Many colours and texture, so colour count and smoothing both show."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    hsv = np.stack(np.broadcast_arrays(x * 300.0, 0.35 + 0.5 * y, 0.45 + 0.5 * (1.0 - y)), axis=-1)
    rgb = cv2.cvtColor(np.ascontiguousarray(hsv, dtype=np.float32), cv2.COLOR_HSV2RGB) * 255.0
    rgb += rng.normal(0.0, 10.0, rgb.shape).astype(np.float32)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.08, 0.2) * min(width, height)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=(15, 15, 15), width=2)
    return image.filter(ImageFilter.GaussianBlur(0.7))


def run(style: ToonStyle, image: Image.Image) -> list[VariantImage]:
    engine = ToonEngine("toon", style)
    engine.setup()
    return engine(image)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return rich_photo(320, 240, seed=3)


@pytest.fixture(scope="module")
def default_variants(photo: Image.Image) -> list[VariantImage]:
    return run(ToonStyle(max_side=320), photo)


def test_variant_count_and_identity(default_variants: list[VariantImage]) -> None:
    style = ToonStyle()
    assert len(default_variants) == style.variants
    for i, v in enumerate(default_variants):
        assert (v.style, v.engine, v.index, v.seed) == ("toon", "toon", i, style.seed + i)
        assert v.image.mode == "RGB"


def test_variants_differ_from_each_other_and_from_input(
    photo: Image.Image, default_variants: list[VariantImage]
) -> None:
    for a, b in itertools.combinations(default_variants, 2):
        assert mean_abs_diff(a.image, b.image) > MIN_VARIANT_DIFFERENCE, (a.parameters, b.parameters)
    for v in default_variants:
        assert v.image.size == photo.size
        assert mean_abs_diff(v.image, photo) > MIN_INPUT_DIFFERENCE


def test_variants_are_a_real_choice_recorded_in_their_parameters(default_variants: list[VariantImage]) -> None:
    """Each variant has its own palette treatment, tone levels and line weight, recorded; every two
    differ by more than ``MIN_CHOICE_DIFFERENCE``, and so does each against its own pixels under the
    first variant's look (what a variant would be if only its seed's k-means changed)."""
    looks = [(v.parameters["palette"], v.parameters["tones"], v.parameters["edge_width"]) for v in default_variants]
    assert len(set(looks)) == len(looks), looks
    assert [p for p, _, _ in looks] == [p.value for p in PALETTE_ORDER[: len(looks)]]
    assert {t for _, t, _ in looks} == set(TONE_LEVELS)
    for a, b in itertools.combinations(default_variants, 2):
        assert mean_abs_diff(a.image, b.image) > MIN_CHOICE_DIFFERENCE, (a.parameters, b.parameters)


def test_the_same_seed_reproduces_a_variant_whatever_the_variant_count(photo: Image.Image) -> None:
    one = run(ToonStyle(variants=1, seed=2, max_side=320), photo)[0]
    third = run(ToonStyle(variants=3, seed=0, max_side=320), photo)[2]
    assert encode_png(one.image, one.parameters) == encode_png(third.image, third.parameters)


def test_output_is_flat_colour_with_dark_lines(photo: Image.Image, default_variants: list[VariantImage]) -> None:
    for v in default_variants:
        pixels = np.asarray(v.image).reshape(-1, 3)
        # Palette colours cover most pixels; the rest are anti-aliased line edges.
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        top = np.sort(counts)[::-1][: v.parameters["colors"]].sum()
        assert top / len(pixels) > 0.6
        assert len(colours) < len(np.unique(np.asarray(photo).reshape(-1, 3), axis=0))
        dark = (pixels.max(axis=1) < 40).mean()
        assert 0.002 < dark < 0.3, "expected some, but not mostly, dark outline pixels"


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((640, 480), 512, (512, 384)),
        ((480, 640), 512, (384, 512)),
        ((1600, 900), 512, (512, 288)),
        ((200, 150), 512, (200, 150)),  # never upscaled
    ],
)
def test_aspect_ratio_kept_and_long_side_capped(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    image = photo_image(*size, seed=1)
    (variant,) = run(ToonStyle(variants=1, max_side=max_side), image)
    assert variant.image.size == expected
    assert max(variant.image.size) <= max_side
    assert variant.image.width / variant.image.height == pytest.approx(size[0] / size[1], rel=0.01)
    assert variant.parameters["working_size"] == f"{expected[0]}x{expected[1]}"


def test_same_input_and_seed_give_identical_bytes(photo: Image.Image) -> None:
    style = ToonStyle(variants=2, seed=11, max_side=320)
    first = [encode_png(v.image, v.parameters) for v in run(style, photo)]
    second = [encode_png(v.image, v.parameters) for v in run(style, photo.copy())]
    assert first == second


def test_parameters_recorded_within_ranges(default_variants: list[VariantImage]) -> None:
    style = ToonStyle(max_side=320)
    for v in default_variants:
        p = v.parameters
        assert style.colors[0] <= p["colors"] <= style.colors[1]
        assert style.smoothing[0] <= p["smoothing"] <= style.smoothing[1]
        assert style.edge_width[0] <= p["edge_width"] <= style.edge_width[1]
        assert p["seed"] == v.seed
        assert p["max_side"] == 320
        assert p["working_size"] == f"{v.image.width}x{v.image.height}"
        assert p["engine"] == "toon" and p["style"] == "toon"
    draws = {(v.parameters["colors"], v.parameters["smoothing"], v.parameters["edge_width"]) for v in default_variants}
    assert len(draws) > 1, "the seeds should draw different parameters"


def test_parameter_ranges_are_inclusive() -> None:
    style = ToonStyle(colors=(2, 3), smoothing=(1, 2), edge_width=(4, 5))
    draws = [draw_parameters(style, seed) for seed in range(64)]
    assert {d["colors"] for d in draws} == {2, 3}
    assert {d["smoothing"] for d in draws} == {1, 2}
    assert {d["edge_width"] for d in draws} == {4, 5}
    assert draw_parameters(style, 7) == draw_parameters(style, 7)


def test_style_seed_shifts_variants(photo: Image.Image) -> None:
    # Variant 1 of seed 0 is variant 0 of seed 1.
    a = run(ToonStyle(variants=2, seed=0, max_side=320), photo)[1]
    b = run(ToonStyle(variants=1, seed=1, max_side=320), photo)[0]
    assert a.parameters == b.parameters
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_input_is_converted(photo: Image.Image, mode: str) -> None:
    (variant,) = run(ToonStyle(variants=1, max_side=320), photo.convert(mode))
    assert variant.image.mode == "RGB" and variant.image.size == photo.size


def test_flat_image_with_fewer_colours_than_clusters() -> None:
    image = Image.new("RGB", (96, 64), (200, 40, 40))
    (variant,) = run(ToonStyle(variants=1, colors=(14, 14)), image)
    assert variant.image.size == (96, 64)


def test_describe() -> None:
    info = ToonEngine("comic", ToonStyle(variants=3)).describe()
    assert info["engine"] == "toon" and info["style"] == "comic" and info["available"] is True
    assert info["variants"] == 3


def test_the_variants_bench_reports_speed_and_how_far_apart_the_variants_are(monkeypatch, capsys) -> None:
    from bench import toon_variants

    monkeypatch.setattr("sys.argv", ["toon_variants", "--size", "96x64", "--variants", "3", "--repeats", "1"])
    toon_variants.main()
    out = capsys.readouterr().out
    assert "3 variants of a 96x64 photo: median " in out and "over 1 runs" in out
    assert "mean absolute difference between two variants: min " in out
    assert "#2: colors " in out and "palette pastel, tones 3" in out

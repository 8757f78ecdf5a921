"""The classical subject mask (GrabCut seeded from the border's colours, ``pipeline.mask.onnx: null``)
on synthetic scenes with a known subject: off-centre toys on a desk in front of a wall, at several
aspect ratios. (The default, the real u2netp model, is tested in ``tests/models/test_real_mask.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from processor.config import MaskSettings
from processor.pipeline.mask import SubjectMasker, clean, feather, iou
from testkit.scenes import ASPECTS, _desk, scene

#: The issue's bar for easy scenes.
MIN_IOU = 0.85
#: The weight-free segmenter.
GRABCUT = MaskSettings(onnx=None)

#: (seed, centre as fractions of w/h, height as a fraction of the image height): off-centre left,
#: right, low, and one cut off by the bottom edge (a toy photographed close).
PLACEMENTS = [(0, (0.33, 0.6), 0.45), (1, (0.7, 0.55), 0.5), (3, (0.25, 0.7), 0.35), (5, (0.6, 0.75), 0.7)]


@pytest.mark.parametrize("aspect", sorted(ASPECTS))
@pytest.mark.parametrize("seed,centre,scale", PLACEMENTS)
def test_mask_finds_an_off_centre_toy(aspect, seed, centre, scale):
    w, h = ASPECTS[aspect]
    truth = scene(w * 2, h * 2, seed, centre=centre, scale=scale)
    mask = SubjectMasker(GRABCUT).compute(truth.image)
    assert mask.size == truth.image.size
    assert iou(mask.hard, truth.truth) >= MIN_IOU, (aspect, seed, centre, scale)
    assert mask.coverage == pytest.approx(truth.truth.mean(), abs=0.05)
    assert mask.fallback is None and mask.method == "grabcut"


def test_an_empty_desk_falls_back_with_a_reason():
    desk = Image.fromarray(_desk(240, 180, np.random.default_rng(2), 0.45).astype(np.uint8))
    mask = SubjectMasker(GRABCUT).compute(desk)
    assert mask.coverage < 0.02
    assert "below pipeline.mask.min_coverage" in mask.fallback


def test_a_toy_touching_top_and_bottom_edges_is_found():
    big = scene(160, 120, 1, centre=(0.5, 0.55), scale=1.2)
    mask = SubjectMasker(GRABCUT).compute(big.image)
    assert iou(mask.hard, big.truth) >= MIN_IOU and mask.fallback is None


def test_a_subject_filling_too_much_of_the_frame_falls_back():
    big = scene(160, 120, 1, centre=(0.5, 0.55), scale=1.2)
    mask = SubjectMasker(MaskSettings(onnx=None, max_coverage=0.3)).compute(big.image)
    assert mask.coverage > 0.3 and "above pipeline.mask.max_coverage" in mask.fallback


def test_cleaning_keeps_the_largest_component_and_fills_its_holes():
    hard = np.zeros((60, 80), bool)
    hard[10:50, 10:40] = True
    hard[25:30, 20:25] = False  # an eye: a hole
    hard[5:8, 70:73] = True     # a speck elsewhere
    cleaned = clean(hard)
    assert cleaned[11:49, 11:39].all() and not cleaned[5:8, 70:73].any()  # corners may round off


def test_feathered_edge_is_exact_inside_and_outside():
    hard = np.zeros((64, 64), bool)
    hard[16:48, 16:48] = True
    alpha = feather(hard, sigma=2.0)
    assert (alpha[22:42, 22:42] == 255).all()  # farther than 3 sigma inside
    assert (alpha[:9] == 0).all()
    band = (alpha > 0) & (alpha < 255)
    assert band.any() and not band[24:40, 24:40].any()


def test_mask_is_cached_per_image_and_resized_for_smaller_variants():
    masker = SubjectMasker(GRABCUT)
    image = scene(200, 150, 0).image
    first = masker(image)
    assert masker(image.copy()) is first  # same pixels: computed once
    small = first.alpha_at((100, 75))
    assert small.shape == (75, 100) and small.dtype == np.uint8


def test_outputs_write_one_mask_and_a_background_record_per_variant():
    """The encode side, without torch: two variants sharing one mask give one mask.png, and each
    manifest entry points at it with its own background record."""
    import io

    from processor.pipeline.base import VariantImage
    from processor.pipeline.outputs import encode_outputs
    from processor.queue.keys import MASK_NAME

    photo = scene(160, 120, 0, scale=0.6).image
    mask = SubjectMasker(GRABCUT)(photo)
    info = {"mode": "generate", "prompt": "a beach", "model": "m", "coverage": round(mask.coverage, 4),
            "segmenter": mask.method, "applied": True, "fallback": None, "steps": 3}
    variants = [VariantImage(style="s", engine="img2img", index=i, seed=i, image=photo, background=info | {"seed": i},
                             mask=mask) for i in range(2)]
    files, entries, _sheet = encode_outputs(photo, variants, output_prefix="outputs/a/", sheet_height=32)
    names = [f.name for f in files]
    assert names.count(MASK_NAME) == 1 and names.index(MASK_NAME) == 0  # written before the variants
    written = Image.open(io.BytesIO(files[0].body))
    assert written.mode == "L" and written.size == photo.size
    assert np.array_equal(np.asarray(written), mask.alpha)
    for i, entry in enumerate(entries):
        bg = entry.background
        assert bg.mask == "outputs/a/" + MASK_NAME and bg.seed == i and bg.mode == "generate"
        assert bg.model_extra["steps"] == 3  # stage details are kept
    plain, _, _ = encode_outputs(photo, [VariantImage(style="t", engine="toon", index=0, seed=0, image=photo)],
                                 output_prefix="outputs/b/", sheet_height=None)
    assert [f.name for f in plain] == ["t-00.png"]


def test_outputs_write_the_mask_over_the_photo_beside_the_mask():
    """mask-overlay.jpg (background tinted, subject outlined; sRGB, at most PREVIEW_SIDE long) comes
    right after mask.png, every background record names it, and attempt-scoped names follow it."""
    import io

    from processor.pipeline.base import VariantImage
    from processor.pipeline.mask import PREVIEW_SIDE
    from processor.pipeline.outputs import attempt_scoped, encode_outputs
    from processor.queue.keys import MASK_NAME, MASK_OVERLAY_NAME

    photo = scene(1200, 900, 0, scale=0.6).image
    mask = SubjectMasker(GRABCUT)(photo)
    info = {"mode": "generate", "prompt": "a beach", "coverage": round(mask.coverage, 4), "applied": True}
    variants = [VariantImage(style="s", engine="toon", index=0, seed=0, image=photo, background=info, mask=mask)]
    files, entries, sheet = encode_outputs(photo, variants, output_prefix="outputs/a/", sheet_height=32)
    assert [f.name for f in files][:2] == [MASK_NAME, MASK_OVERLAY_NAME] and files[1].content_type == "image/jpeg"
    shown = Image.open(io.BytesIO(files[1].body))
    assert shown.size == (PREVIEW_SIDE, 768) and shown.info.get("icc_profile")
    pixels = np.asarray(shown.convert("RGB"), float)
    small = np.asarray(photo.resize(shown.size), float)
    outside = mask.alpha_at(shown.size) == 0
    assert np.abs(pixels[outside] - small[outside]).mean() > 20  # the background is tinted
    assert entries[0].background.mask_overlay == "outputs/a/" + MASK_OVERLAY_NAME
    _, renamed, _ = attempt_scoped(files, entries, sheet, output_prefix="outputs/a/", token="t1")
    assert renamed[0].background.mask_overlay == "outputs/a/mask-overlay.t1.jpg"

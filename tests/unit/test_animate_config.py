"""``engine: animate`` settings without a model: the style's own checks, the chain checks at config
load (``image_from``), ``pipeline.video``'s bounds on styles and sidecars, and the order styles run in."""

from __future__ import annotations

import json

import pytest

from processor.config import AnimateStyle, Settings, load_settings, with_sources, work_bound_problem
from processor.errors import ConfigError, InvalidSidecar
from processor.pipeline.prompt import takes_prompt
from processor.pipeline.sidecar import validate_overrides

STILL = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion", "variants": 3}
CLIP = {"engine": "animate", "model": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "license": "apache-2.0"}


def load(tmp_path, styles: dict, run: dict | None = None, pipeline: dict | None = None) -> Settings:
    config = {"styles": styles, "run": {"styles": list(styles)[-1:]} | (run or {}), "pipeline": pipeline or {}}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    return load_settings(tmp_path / "config.yaml")


def test_an_animate_style_defaults_to_one_clip_the_models_own_shape_and_the_photo():
    style = AnimateStyle.model_validate({"engine": "animate", "model": "m"})
    assert (style.variants, style.steps, style.frames, style.fps, style.size) == (1, 25, None, None, None)
    assert style.image_source() is None and not takes_prompt(style)  # no trigger, no prompt: no caption
    assert takes_prompt(AnimateStyle.model_validate({"engine": "animate", "model": "m", "trigger": "it dances"}))
    chained = AnimateStyle.model_validate({"engine": "animate", "model": "m", "image_from": "d",
                                           "image_from_variants": "all"})
    assert (chained.image_source().style, chained.image_source().variants) == ("d", "all")


@pytest.mark.parametrize("extra, message", [
    ({"frames": 1}, "frames"), ({"frames": 300}, "frames"), ({"fps": 0}, "fps"), ({"fps": 61}, "fps"),
    ({"motion_bucket_id": 256}, "motion_bucket_id"), ({"noise_aug_strength": 2}, "noise_aug_strength"),
    ({"min_guidance": 3.0, "max_guidance": 1.0}, "min_guidance 3.0 is above max_guidance 1.0"),
    ({"image_from_variants": "all"}, "image_from_variants: all needs image_from"),
    ({"size": 100}, "multiple of 8"), ({"offload": "gpu"}, "offload"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {"anim": CLIP | extra})


@pytest.mark.parametrize("image_from, message", [
    ("nope", r"styles\.anim\.image_from names 'nope', which is not defined under styles; name a still style "
             r"\(defined: modern-disney\) \(from .*config\.yaml\)"),
    ("anim", r"styles\.anim\.image_from names 'anim', an animate style; image_from names a still style"),
    ("other", r"styles\.anim\.image_from names 'other', an animate style"),
])
def test_image_from_must_name_a_still_style(tmp_path, image_from, message):
    styles = {"modern-disney": STILL, "other": CLIP, "anim": CLIP | {"image_from": image_from}}
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, styles)


@pytest.mark.parametrize("extra, pipeline, message", [
    ({"frames": 49}, {"video": {"max_frames": 33}}, r"styles\.anim\.frames 49 is over pipeline\.video\.max_frames "
                                                      r"\(33\)"),
    ({"size": 1536}, {}, r"styles\.anim\.size 1536 is over pipeline\.video\.max_size \(1280\)"),
    ({"decode_chunk_size": 30}, {}, r"decode_chunk_size 30 is over pipeline\.video\.max_decode_chunk_size \(25\)"),
])
def test_clip_bounds_of_pipeline_video_hold_for_styles(tmp_path, extra, pipeline, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {"anim": CLIP | extra}, pipeline=pipeline)


def test_still_styles_run_before_the_styles_that_animate_them_and_count_toward_the_caps(tmp_path):
    styles = {"disney": STILL, "toon": {"engine": "toon"},
              "anim": CLIP | {"image_from": "disney", "image_from_variants": "all", "variants": 2}}
    settings = load(tmp_path, styles, run={"styles": ["anim", "toon"]})
    assert with_sources(["anim", "toon"], settings.styles) == ["disney", "anim", "toon"]
    assert with_sources(["toon", "anim", "disney"], settings.styles) == ["toon", "disney", "anim"]
    # 3 stills + 3 x 2 clips + 1 toon variant (default 4): the still style counts though not named.
    assert work_bound_problem(["anim", "toon"], settings.styles, settings.run.model_copy(
        update={"max_variants_per_input": 12})) == ("ask for 13 variants in all; at most 12 per input "
                                                    "(run.max_variants_per_input): fewer styles or fewer variants")
    assert "(and 1 still style they animate)" in work_bound_problem(
        ["anim", "toon"], settings.styles, settings.run.model_copy(update={"max_styles_per_input": 2}))
    # The input's styles are the chain's, in the order they run.
    assert validate_overrides(None, settings).styles == ("disney", "anim", "toon")
    assert validate_overrides({"styles": ["anim"]}, settings).styles == ("disney", "anim")


def test_a_sidecar_asks_for_frames_and_fps_within_pipeline_video(tmp_path):
    settings = load(tmp_path, {"anim": CLIP}, pipeline={"video": {"max_frames": 49}})
    chosen = validate_overrides({"frames": 33, "fps": 12}, settings, where="sidecar inputs/toy.json")
    assert dict(chosen.style_fields) == {"frames": 33, "fps": 12}
    with pytest.raises(InvalidSidecar, match=r"sidecar inputs/toy\.json: frames 10,000 is more than this worker makes "
                                             r"\(pipeline\.video\.max_frames: 49\); ask for at most 49"):
        validate_overrides({"frames": 10_000}, settings, where="sidecar inputs/toy.json")
    for bad, key in (({"frames": 1}, "frames"), ({"frames": "9"}, "frames"), ({"fps": 100}, "fps")):
        with pytest.raises(InvalidSidecar, match=key):
            validate_overrides(bad, settings)


def test_a_noncommercial_clip_model_is_gated_like_any_other(tmp_path):
    svd = {"engine": "animate", "model": "stabilityai/stable-video-diffusion-img2vid-xt", "license": "non-commercial"}
    with pytest.raises(ConfigError, match=r"style 'anim' \(model stabilityai/stable-video-diffusion-img2vid-xt: "
                                          r"license non-commercial\).*run\.allow_noncommercial"):
        load(tmp_path, {"anim": svd})
    assert load(tmp_path, {"anim": svd}, run={"allow_noncommercial": True}).styles["anim"].license == "non-commercial"

"""``engine: txt2img``: a fresh picture from the caption and trigger words alone, through the
worker with the tiny random-weight model (``processor run --once``)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import ModelSettings, Txt2ImgStyle
from processor.errors import ConfigError
from processor.models.loader import ModelLoader
from processor.pipeline.encode import PARAMETERS_KEY
from processor.pipeline.txt2img import Txt2ImgEngine
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.models.test_diffusion import TRIGGER, drain, img2img_style, make_settings, manifest_of


def txt2img_style(model, **extra) -> dict:
    return {"engine": "txt2img", "model": str(model), "trigger": TRIGGER, "negative": "blurry",
            "prompt": "a toy robot", "steps": 3, "guidance": 6.0, "variants": 2, "seed": 11,
            "license": "creativeml-openrail-m"} | extra


def test_txt2img_runs_through_processor_run_once_at_the_photos_aspect_and_records_what_ran(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"fresh": txt2img_style(tiny_sd)})
    store = LocalStore(settings.store.root)
    store.put("inputs/wide.jpg", photo_bytes(200, 100, seed=1))
    store.put("inputs/tall.png", photo_bytes(90, 120, fmt="PNG", seed=2))
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml"), "--metrics-port", "0"]) == 0
    layout = KeyLayout(settings.prefixes)
    shapes = {"inputs/wide.jpg": (64, 32), "inputs/tall.png": (48, 64)}
    pictures = {}
    for key, shape in shapes.items():
        manifest = manifest_of(store, layout, key)
        assert [v.seed for v in manifest.variants] == [11, 12]
        pictures[key] = [v.sha256 for v in manifest.variants]
        assert len(set(pictures[key])) == 2  # seed + i: two different pictures
        for v in manifest.variants:
            p = v.parameters
            assert v.engine == "txt2img" and (v.width, v.height) == shape
            assert p["pipeline"] == "StableDiffusionPipeline"
            assert p["prompt"] == f"a toy robot, {TRIGGER}" and p["prompt_source"] == "style"
            assert (p["steps"], p["guidance"], p["denoising_steps"]) == (3, 6.0, 3)
            assert p["denoising_steps_all_variants"] == 6
            assert p["model"] == str(tiny_sd)
            assert [(u.role, u.license) for u in v.licenses] == [("model", "creativeml-openrail-m")]
            text = Image.open(io.BytesIO(store.get(v.key).body)).text[PARAMETERS_KEY]
            assert f"Seed: {v.seed}" in text and "CFG scale: 6" in text and "Steps: 3" in text
            assert "Denoising strength" not in text  # no photo was re-noised
    # Same prompt and seeds: the picture does not depend on the photo's pixels, only its aspect.
    store2_settings = make_settings(tmp_path / "again", {"fresh": txt2img_style(tiny_sd)})
    store2, layout2 = drain(store2_settings, {"inputs/wide.jpg": photo_bytes(200, 100, seed=9)})
    assert [v.sha256 for v in manifest_of(store2, layout2, "inputs/wide.jpg").variants] == pictures["inputs/wide.jpg"]


def test_txt2img_shares_the_base_with_img2img_and_size_sets_the_long_side(tiny_sd, tmp_path):
    styles = {"fresh": txt2img_style(tiny_sd, size=80, variants=1), "disney": img2img_style(tiny_sd, variants=1)}
    settings = make_settings(tmp_path, styles)
    registry = build_registry(settings)
    fresh, disney = registry.engine("fresh"), registry.engine("disney")
    assert fresh.pipe.unet is disney.pipe.unet and fresh.pipe.vae is disney.pipe.vae
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=3)}, registry)
    [v] = [v for v in manifest_of(store, layout, "inputs/toy.jpg").variants if v.style == "fresh"]
    assert (v.width, v.height) == (80, 64)  # 80 x 60 snapped to multiples of 8


def test_txt2img_refuses_an_instruct_pix2pix_model(tiny_pix2pix):
    style = Txt2ImgStyle(model=str(tiny_pix2pix))
    with pytest.raises(ConfigError, match=r"styles\.x\.model .*8-channel UNet.*text-to-image checkpoint"):
        Txt2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


def test_txt2img_settings_check_size():
    with pytest.raises(ValueError, match="multiple of 8"):
        Txt2ImgStyle(model="m", size=100)
    assert json.loads(Txt2ImgStyle(model="m").model_dump_json())["variants"] == 3


def test_txt2img_on_sdxl_runs_the_sdxl_pipeline(tiny_sdxl, tmp_path):
    settings = make_settings(tmp_path, {"fresh": txt2img_style(tiny_sdxl, variants=1, steps=2)})
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=4)})
    [v] = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert v.parameters["pipeline"] == "StableDiffusionXLPipeline" and (v.width, v.height) == (64, 48)

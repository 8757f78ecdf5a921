"""SD 2.x img2img: a v-prediction model (stabilityai/stable-diffusion-2-1's shape: linear
projections, attention upcast, a DDIM scheduler with ``prediction_type: v_prediction``), tiny
random weights built offline, through ``processor run --once``. Every sampler a style names must
keep the model's prediction type: an epsilon sampler on a v-prediction UNet runs without an error
and paints noise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from processor.cli.compose import build_registry
from processor.pipeline.sampling import SCHEDULERS
from testkit.images import photo_bytes
from testkit.models.sd import _text_config, _unet, _vae, tiny_tokenizer
from tests.models.test_diffusion import img2img_style, make_settings, manifest_of
from tests.models.test_sdxl import run_once

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=8)}


def build_sd2(path: Path) -> Path:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(2)
    tokenizer = tiny_tokenizer()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    StableDiffusionPipeline(
        unet=_unet(use_linear_projection=True, upcast_attention=True), vae=_vae(), scheduler=scheduler,
        text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory) -> Path:
    return build_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2")


@pytest.mark.parametrize("scheduler", ["dpmpp-2m-karras", "euler-a", "ddim", "unipc"])
def test_a_v_prediction_model_keeps_its_prediction_type_under_every_sampler(tiny_sd2, tmp_path, scheduler):
    styles = {"sd2": img2img_style(tiny_sd2, scheduler=scheduler, variants=2)}
    settings = make_settings(tmp_path, styles)
    engine = build_registry(settings).engine("sd2")
    assert type(engine.pipe.scheduler).__name__ == SCHEDULERS[scheduler][0]  # the style's sampler...
    assert engine.pipe.scheduler.config.prediction_type == "v_prediction"  # ...reading the model's output right
    store, layout = run_once(settings, PHOTO)
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    assert [v.style for v in manifest.variants] == ["sd2", "sd2"]
    for v in manifest.variants:
        assert v.parameters["model"] == str(tiny_sd2)
        pixels = np.asarray(Image.open(io.BytesIO(store.get(v.key).body)).convert("RGB"))
        assert pixels.std() > 0  # a picture, not a black square
    # NaN latents decode to black only after 8-bit rounding: the check is on the pipeline's floats.
    outputs = float_outputs(engine)
    engine(Image.open(io.BytesIO(PHOTO["inputs/toy.jpg"])))
    assert outputs and all(bool(torch.isfinite(images).all()) for images in outputs)


def float_outputs(engine) -> list:
    """Every image batch the engine's pipeline returns from now on (floats in [0, 1], before PNG)."""
    outputs: list = []
    pipe = engine.pipe

    class Recording:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def __call__(self, **kwargs):
            result = pipe(**kwargs)
            outputs.append(result.images)
            return result

    engine.pipe = Recording()
    return outputs

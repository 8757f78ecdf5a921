"""Few-step styles: an LCM-LoRA (``styles.<name>.lcm``) switches the style to the LCM scheduler;
tiny random-weight models and a tiny LoRA, through the production loader and the worker."""

from __future__ import annotations

import pytest
from PIL import Image

from processor.config import Img2ImgStyle, ModelSettings
from processor.models.loader import ModelLoader
from processor.pipeline.diffusion import Img2ImgEngine
from tests.images import photo_bytes
from tests.sd.test_diffusion import drain, img2img_style, make_settings, manifest_of

pytest.importorskip("peft")

FAST_ROUNDS = [{"strength": 0.5, "guidance": 1.0}]


def test_lcm_style_runs_few_steps_with_the_lcm_scheduler_through_the_worker(tiny_sd, tiny_lora, tmp_path):
    style = img2img_style(tiny_sd, rounds=FAST_ROUNDS, steps=8, lcm={"lora": str(tiny_lora)})
    settings = make_settings(tmp_path, {"fast": style})
    assert settings.styles["fast"].scheduler == "lcm"
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=2)})
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        p = v.parameters
        assert p["scheduler"] == "lcm" and p["lcm"] == {"lora": str(tiny_lora), "scale": 1.0}
        assert p["denoising_steps"] == 4 and p["denoising_steps_all_variants"] == 12


def test_the_lcm_lora_is_active_for_its_style_only(tiny_sd, tiny_lora):
    image = Image.new("RGB", (64, 48), (30, 120, 200))
    lcm_scheduler_only = Img2ImgStyle(model=str(tiny_sd), steps=8, variants=1, rounds=FAST_ROUNDS, scheduler="lcm")
    loader = ModelLoader(ModelSettings())
    plain = Img2ImgEngine("plain", lcm_scheduler_only, loader)
    fast = Img2ImgEngine("fast", Img2ImgStyle.model_validate(
        lcm_scheduler_only.model_dump() | {"lcm": {"lora": str(tiny_lora)}}), loader)
    plain.setup()
    reference = plain(image)[0].image.tobytes()
    fast.setup()
    assert fast.pipe.unet is plain.pipe.unet
    assert type(fast.pipe.scheduler).__name__ == "LCMScheduler"
    assert fast(image)[0].image.tobytes() != reference  # the LoRA changed the UNet...
    assert plain(image)[0].image.tobytes() == reference  # ...only while the fast style runs


def test_lcm_refuses_guidance_it_was_not_trained_for():
    with pytest.raises(ValueError, match="too high for lcm"):
        Img2ImgStyle(model="m", lcm={"lora": "x"}, rounds=[{"strength": 0.5, "guidance": 7.5}])

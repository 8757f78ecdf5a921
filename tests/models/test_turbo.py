"""Turbo few-step styles (``turbo: true``: SD-Turbo, SDXL-Turbo): guidance 0, 1-4 steps on trailing
timesteps. Tiny random-weight SD and SDXL models through the production loader and the worker."""

from __future__ import annotations

import pytest
from diffusers import UNet2DConditionModel

from processor.cli.compose import build_registry
from processor.config import Img2ImgStyle
from testkit.images import photo_bytes
from tests.models.test_diffusion import img2img_style, make_settings, manifest_of
from tests.models.test_sdxl import run_once

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=8)}
#: sdxl-turbo's documented img2img setting: 2 steps at strength 0.5, one denoising step.
TURBO = {"turbo": True, "rounds": [{"strength": 0.5, "guidance": 0.0}], "steps": 2, "negative": ""}


@pytest.mark.parametrize("family", ["tiny_sd", "tiny_sdxl"])
def test_turbo_style_runs_one_unguided_step_from_a_trailing_timestep(family, request, tmp_path, monkeypatch):
    model = request.getfixturevalue(family)
    style = img2img_style(model, **TURBO)
    style.pop("scheduler")
    settings = make_settings(tmp_path, {"turbo": style})
    registry = build_registry(settings)
    engine = registry.engine("turbo")
    assert engine.loaded.family.turbo  # the family's turbo row: SD-Turbo / SDXL-Turbo
    # The fixtures' scheduler config says "leading"; turbo models were distilled on "trailing".
    assert type(engine.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert engine.pipe.scheduler.config.timestep_spacing == "trailing"
    seen: list[tuple[int, float]] = []
    forward = UNet2DConditionModel.forward

    def counted(self, sample, timestep, *args, **kwargs):
        seen.append((int(sample.shape[0]), float(timestep if not hasattr(timestep, "flatten")
                                                 else timestep.flatten()[0])))
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counted)
    store, layout = run_once(settings, PHOTO)
    # One call for the 3 variants, batch 3 (no classifier-free guidance doubling), at t = 499:
    # trailing spacing over 2 steps is [999, 499] and strength 0.5 keeps the last one.
    assert seen == [(3, 499.0)]
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        p = v.parameters
        assert p["turbo"] is True and p["timestep_spacing"] == "trailing" and p["scheduler"] == "euler-a"
        assert p["rounds"][0]["guidance"] == 0.0 and p["denoising_steps"] == 1
        assert p["denoising_steps_all_variants"] == 3


def test_turbo_refuses_guidance_steps_and_rounds_that_do_not_denoise():
    with pytest.raises(ValueError, match=r"guidance 7\.5 for turbo.*set guidance: 0"):
        Img2ImgStyle(model="m", turbo=True, steps=2, rounds=[{"strength": 0.5}])
    with pytest.raises(ValueError, match="steps 8 is too many for turbo"):
        Img2ImgStyle(model="m", turbo=True, steps=8, rounds=[{"strength": 0.5, "guidance": 0}])
    # strength x steps below 1: no denoising step at all.
    with pytest.raises(ValueError, match=r"strength 0\.4 with steps 2 gives 0 denoising steps"):
        Img2ImgStyle(model="m", turbo=True, steps=2, rounds=[{"strength": 0.4, "guidance": 0}])
    with pytest.raises(ValueError, match="turbo and lcm"):
        Img2ImgStyle(model="m", turbo=True, steps=2, lcm={"lora": "x"}, rounds=[{"strength": 0.5, "guidance": 0}])
    ok = Img2ImgStyle(model="m", turbo=True, steps=4, rounds=[{"strength": 0.25, "guidance": 0}])
    assert ok.scheduler == "euler-a"

"""``bench.unet_evals`` on the CPU: the shipped styles' UNet evaluations, counted with tiny models."""

from __future__ import annotations

import json

import pytest

from bench import unet_evals

pytest.importorskip("peft")


def test_shipped_fast_style_is_at_least_8x_cheaper_than_modern_disney(capsys):
    rows = unet_evals.main(["--styles", "modern-disney", "modern-disney-fast", "--fast", "modern-disney-fast"])
    disney, fast = rows["modern-disney"], rows["modern-disney-fast"]
    # The notebook's pattern: 5 variants x (21 + 18 + 15 + 12) steps, each a guided (two-sample) call.
    assert (disney["variants"], disney["denoising_steps"], disney["unet_evaluations"]) == (5, 330, 660)
    assert disney["unet_calls"] == 66  # the 5 variants of a round are one batched call per step
    assert (fast["variants"], fast["denoising_steps"], fast["unet_evaluations"]) == (5, 20, 20)
    assert fast["cheaper_than_reference"] == 33.0
    out = capsys.readouterr().out
    assert "| modern-disney-fast | nitrosocke/mo-di-diffusion | 5 | 4 | 20 | 20 | 4 | 0 | 33.0x fewer |" in out


def test_controlnets_are_counted_and_a_slow_fast_style_fails_the_check(tmp_path):
    style = {"engine": "img2img", "model": "some/model", "rounds": [{"strength": 0.5, "guidance": 5.0}],
             "steps": 4, "variants": 2, "control": {"model": "some/controlnet"}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"ref": style, "held": style | {"variants": 1}}}))
    rows = unet_evals.main(["--config", str(config), "--reference", "ref"])
    assert rows["ref"]["unet_evaluations"] == rows["ref"]["controlnet_evaluations"] == 2 * 2 * 2
    with pytest.raises(SystemExit) as info:
        unet_evals.main(["--config", str(config), "--reference", "ref", "--fast", "held"])
    assert info.value.code == 1

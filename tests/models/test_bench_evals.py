"""``bench.unet_evals`` on the CPU: the shipped styles' UNet (and flow transformer) evaluations,
counted with tiny models.

The tiny models are built once for the module (``--models``), and the shipped styles are counted in
one run (``shipped``): the reference schedule, ``modern-disney``'s 330 denoising steps, runs once.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import unet_evals

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
FLOW_STYLES = str(ROOT / "bench" / "flow_styles.yaml")
#: The shipped (and flow_styles.yaml's) styles the tests below read, counted in one run.
SHIPPED_STYLES = ("modern-disney", "modern-disney-fast", "cartoon-turbo", "flux-fast", "kontext", "sd35-medium",
                  "qwen-edit")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One folder of tiny models for every run in this module (each built by the first run needing it)."""
    return str(tmp_path_factory.mktemp("bench-evals-models"))


@pytest.fixture(scope="module")
def shipped(models: str) -> tuple[dict[str, Any], str]:
    """The rows of one run over ``SHIPPED_STYLES`` and the table it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = unet_evals.main(["--also", FLOW_STYLES, "--styles", *SHIPPED_STYLES, "--fast", "modern-disney-fast",
                                "--models", models])
    return rows, printed.getvalue()


def test_shipped_fast_style_is_at_least_8x_cheaper_than_modern_disney(shipped):
    rows, out = shipped
    disney, fast = rows["modern-disney"], rows["modern-disney-fast"]
    # The notebook's pattern: 5 variants x (21 + 18 + 15 + 12) steps, each a guided (two-sample) call.
    assert (disney["variants"], disney["denoising_steps"], disney["unet_evaluations"]) == (5, 330, 660)
    assert disney["unet_calls"] == 66  # the 5 variants of a round are one batched call per step
    assert (fast["variants"], fast["denoising_steps"], fast["unet_evaluations"]) == (5, 20, 20)
    assert fast["cheaper_than_reference"] == 33.0
    assert "| modern-disney-fast | nitrosocke/mo-di-diffusion | UNet | 5 | 4 | 20 | 20 | 4 | 0 | 33.0x fewer |" in out


def test_controlnets_are_counted_and_a_slow_fast_style_fails_the_check(tmp_path, models):
    style = {"engine": "img2img", "model": "some/model", "rounds": [{"strength": 0.5, "guidance": 5.0}],
             "steps": 4, "variants": 2, "control": {"model": "some/controlnet"}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"ref": style, "held": style | {"variants": 1}}}))
    rows = unet_evals.main(["--config", str(config), "--reference", "ref", "--models", models])
    assert rows["ref"]["unet_evaluations"] == rows["ref"]["controlnet_evaluations"] == 2 * 2 * 2
    with pytest.raises(SystemExit) as info:
        unet_evals.main(["--config", str(config), "--reference", "ref", "--fast", "held", "--models", models])
    assert info.value.code == 1


def test_shipped_turbo_style_is_counted_on_a_tiny_sdxl(shipped):
    rows, out = shipped
    turbo = rows["cartoon-turbo"]
    # 5 variants x int(2 * 0.5) = 1 step, guidance 0: one sample each, in one batched call.
    counted = (turbo["variants"], turbo["unet_calls"], turbo["denoising_steps"], turbo["unet_evaluations"])
    assert counted == (5, 1, 5, 5)
    assert turbo["cheaper_than_reference"] == 132.0
    row = "| cartoon-turbo | stabilityai/sdxl-turbo | UNet | 5 | 1 | 5 | 5 | 1 | 0 | 132.0x fewer |"
    assert row in out


def test_a_refiner_round_is_counted(tmp_path, models):
    style = {"engine": "img2img", "model": "stabilityai/stable-diffusion-xl-base-1.0", "steps": 4, "variants": 2,
             "rounds": [{"strength": 0.5, "guidance": 5.0}],
             "refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0", "strength": 0.5, "steps": 4,
                         "guidance": 5.0}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"xl": style}}))
    rows = unet_evals.main(["--config", str(config), "--reference", "xl", "--models", models])
    # Base: 2 guided steps; refiner: 2 guided steps; 2 variants batched, 2 samples each per call.
    assert (rows["xl"]["unet_calls"], rows["xl"]["denoising_steps"], rows["xl"]["unet_evaluations"]) == (4, 8, 16)


def test_flow_styles_count_transformer_evaluations(shipped):
    rows, out = shipped
    flux, kontext, sd3, qwen = rows["flux-fast"], rows["kontext"], rows["sd35-medium"], rows["qwen-edit"]
    for row in (flux, kontext, sd3, qwen):
        assert row["denoiser"] == "transformer" and row["unet_evaluations"] == 0
        assert row["evaluations"] == row["transformer_evaluations"]
    # schnell: 4 variants x int(4 x 0.75) = 3 steps, no guidance input: one sample each, batched.
    assert (flux["variants"], flux["transformer_calls"], flux["denoising_steps"], flux["evaluations"]) == (4, 3, 12, 12)
    assert flux["cheaper_than_reference"] == 55.0
    # Kontext dev: 28 steps, distilled guidance (an input, not a second sample).
    assert (kontext["transformer_calls"], kontext["denoising_steps"], kontext["evaluations"]) == (28, 112, 112)
    # SD 3.5: int(20 x 0.6) = 12 steps, classifier-free guidance: two samples per image and step.
    assert (sd3["transformer_calls"], sd3["denoising_steps"], sd3["evaluations"]) == (12, 48, 96)
    assert sd3["evaluations_per_variant"] == 24
    # Qwen-Image-Edit: 28 steps of true CFG, a conditional and an unconditional call each (4 variants batched).
    assert (qwen["transformer_calls"], qwen["denoising_steps"], qwen["evaluations"]) == (56, 112, 224)
    assert ("| flux-fast | black-forest-labs/FLUX.1-schnell | transformer | 4 | 3 | 12 | 12 | 3 | 0 | "
            "55.0x fewer |") in out


def commented_flow_styles() -> dict:
    """The flow styles config.yaml offers commented out, uncommented and parsed."""
    lines = (ROOT / "config.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # Flow-transformer families"))
    block = []
    for line in lines[start + 2:]:
        if not line.startswith("  #"):
            break
        block.append(line[:2] + line[4:])  # "  # flux-fast:" -> "  flux-fast:"
    return yaml.safe_load("styles:\n" + "\n".join(block))["styles"]


def test_the_benchmarked_flow_styles_are_the_ones_config_yaml_offers():
    offered = commented_flow_styles()
    counted = yaml.safe_load(Path(FLOW_STYLES).read_text(encoding="utf-8"))["styles"]
    assert set(offered) == {"flux-fast", "kontext", "qwen-edit"}
    for name, style in offered.items():
        assert counted[name] == style


def test_a_lora_on_a_flow_style_is_counted_on_a_lora_for_its_transformer(tmp_path, models):
    style = {"engine": "img2img", "model": "black-forest-labs/FLUX.1-schnell", "steps": 4, "variants": 2,
             "rounds": [{"strength": 0.5, "guidance": 0}], "lora": {"path": "someone/flux-toon", "revision": "v1"}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"flux": style}}))
    rows = unet_evals.main(["--config", str(config), "--reference", "flux", "--models", models])
    assert (rows["flux"]["transformer_calls"], rows["flux"]["evaluations"]) == (2, 4)


def test_txt2img_control_is_counted_per_evaluation_for_controlnets_and_once_per_call_for_adapters(tmp_path, models):
    base = {"engine": "txt2img", "model": "some/model", "steps": 4, "guidance": 5.0, "variants": 2}
    styles = {"net": base | {"control": {"model": "some/controlnet"}},
              "adapter": base | {"control": {"model": "TencentARC/t2iadapter_canny_sd15v2"}}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": styles}))
    rows = unet_evals.main(["--config", str(config), "--reference", "net", "--models", models])
    net, adapter = rows["net"], rows["adapter"]
    # 2 variants x 4 guided steps: 16 UNet samples, each beside a ControlNet sample.
    assert net["unet_evaluations"] == net["controlnet_evaluations"] == 16 and net["adapter_calls"] == 0
    # The adapter encodes its map once per call (one per variant in the batch), then every step reuses it.
    assert adapter["unet_evaluations"] == 16 and adapter["controlnet_evaluations"] == 0
    assert (adapter["adapter_calls"], adapter["adapter_evaluations"]) == (1, 2)

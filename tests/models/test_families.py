"""The model family table (``processor.models.families``): which family a folder is, how steps x
strength rounds (checked against diffusers' own ``get_timesteps``), the dtype each family gets,
and the options a family refuses. Folders here hold only ``model_index.json`` and the component
config the lookup reads: no weights load."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from processor.config import Img2ImgStyle, StyleOption
from processor.errors import ConfigError
from processor.models.families import (
    FAMILIES,
    Denoiser,
    Family,
    FamilyId,
    FamilyMatch,
    StepRounding,
    Task,
    choose_dtype,
    family,
    identify,
)
from processor.pipeline.diffusion import refuse_unsupported


def pipeline_folder(path: Path, class_name: str, **components: dict) -> Path:
    """A folder with ``model_index.json`` naming ``class_name`` and ``<component>/config.json`` files."""
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for name, config in components.items():
        (path / name).mkdir()
        (path / name / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("class_name, components, expected", [
    ("StableDiffusionPipeline", {"unet": {"in_channels": 4}}, FamilyId.SD),
    ("StableDiffusionPipeline", {"unet": {"in_channels": 8}}, FamilyId.SD_PIX2PIX),
    ("StableDiffusionInstructPix2PixPipeline", {"unet": {"in_channels": 8}}, FamilyId.SD_PIX2PIX),
    ("StableDiffusionInpaintPipeline", {"unet": {"in_channels": 9}}, FamilyId.SD_INPAINT),
    ("StableDiffusionXLPipeline", {"unet": {"in_channels": 4}}, FamilyId.SDXL),
    ("StableDiffusionXLImg2ImgPipeline", {"unet": {"in_channels": 4}}, FamilyId.SDXL),
    ("FluxPipeline", {"transformer": {"guidance_embeds": True}}, FamilyId.FLUX_DEV),
    ("FluxPipeline", {"transformer": {"guidance_embeds": False}}, FamilyId.FLUX_SCHNELL),
    ("StableDiffusion3Pipeline", {"transformer": {"qk_norm": None}}, FamilyId.SD3),
    ("StableDiffusion3Pipeline", {"transformer": {"qk_norm": "rms_norm"}}, FamilyId.SD3_5),
    ("FluxKontextPipeline", {"transformer": {"guidance_embeds": True}}, FamilyId.FLUX_KONTEXT),
    ("QwenImageEditPipeline", {}, FamilyId.QWEN_IMAGE_EDIT),
    ("QwenImageEditPlusPipeline", {}, FamilyId.QWEN_IMAGE_EDIT_PLUS),
])
def test_the_family_is_the_model_index_class_and_one_component_key(tmp_path, class_name, components, expected):
    found = identify(pipeline_folder(tmp_path / "m", class_name, **components))
    assert found.family.id is expected and found.class_name == class_name


def test_a_class_no_family_runs_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"model 'some/video' is a CogVideoXPipeline .*families this worker runs are "
                                          r"SD 1\.x / 2\.x, .*FLUX\.1 dev"):
        identify(pipeline_folder(tmp_path / "w", "CogVideoXPipeline"), "some/video")
    # Wan's text-to-video checkpoints share WanPipeline with Wan 2.2 TI2V; their 16 input channels run nowhere.
    with pytest.raises(ConfigError, match=r"is a WanPipeline whose transformer/config\.json in_channels matches no "
                                          r"family this worker runs \(Wan 2\.x image-to-video, Wan 2\.2 TI2V\)"):
        identify(pipeline_folder(tmp_path / "t", "WanPipeline", transformer={"in_channels": 16}), "wan/t2v")
    with pytest.raises(ConfigError, match=r"unet/config\.json in_channels matches no family"):
        identify(pipeline_folder(tmp_path / "d", "StableDiffusionPipeline", unet={"in_channels": 5}))


def _diffusers_steps(pipeline_cls, scheduler, steps: int, strength: float) -> int:
    """The denoising steps diffusers' own img2img pipeline runs (its ``get_timesteps``)."""
    scheduler.set_timesteps(steps)
    timesteps, count = pipeline_cls.get_timesteps(SimpleNamespace(scheduler=scheduler), steps, strength, "cpu")
    assert len(timesteps) == count
    return count


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 20, 25, 50])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.56, 0.58, 0.6, 0.75, 1.0])
def test_steps_x_strength_rounds_as_each_familys_pipeline_does(steps, strength):
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxImg2ImgPipeline,
        StableDiffusion3Img2ImgPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
    )

    flow = _diffusers_steps(FluxImg2ImgPipeline, FlowMatchEulerDiscreteScheduler(), steps, strength)
    assert family(FamilyId.FLUX_DEV).denoising_steps(steps, strength) == flow
    assert family(FamilyId.SD3).denoising_steps(steps, strength) == _diffusers_steps(
        StableDiffusion3Img2ImgPipeline, FlowMatchEulerDiscreteScheduler(), steps, strength)
    unet = _diffusers_steps(StableDiffusionImg2ImgPipeline, DDIMScheduler(), steps, strength)
    assert family(FamilyId.SD).denoising_steps(steps, strength) == unet == int(steps * strength)
    assert family(FamilyId.SDXL).denoising_steps(steps, strength) == _diffusers_steps(
        StableDiffusionXLImg2ImgPipeline, DDIMScheduler(), steps, strength)


def test_a_fractional_product_runs_one_more_flow_step_than_it_truncates_to():
    flow, unet = family(FamilyId.FLUX_SCHNELL), family(FamilyId.SD)
    assert (flow.denoising_steps(7, 0.5), unet.denoising_steps(7, 0.5)) == (4, 3)
    # 25 x 0.56 is 14.000000000000002 in floats: diffusers' flow pipelines run 15 steps.
    assert (family(FamilyId.SD3).denoising_steps(25, 0.56), unet.denoising_steps(25, 0.56)) == (15, 14)
    assert all(f.rounding is StepRounding.FLOW for f in FAMILIES if f.denoiser is Denoiser.TRANSFORMER)


@pytest.mark.parametrize("fid, gpu_dtype", [
    (FamilyId.SD, "float16"), (FamilyId.SDXL, "float16"), (FamilyId.SD3, "float16"),
    (FamilyId.FLUX_DEV, "bfloat16"), (FamilyId.FLUX_SCHNELL, "bfloat16"), (FamilyId.SD3_5, "bfloat16"),
    (FamilyId.FLUX_KONTEXT, "bfloat16"), (FamilyId.QWEN_IMAGE_EDIT, "bfloat16"),
    (FamilyId.QWEN_IMAGE_EDIT_PLUS, "bfloat16"),
])
def test_auto_dtype_is_the_familys_own_on_a_gpu_and_float32_on_the_cpu(fid, gpu_dtype):
    assert choose_dtype("auto", family(fid), on_gpu=True) == gpu_dtype
    assert choose_dtype("auto", family(fid), on_gpu=False) == "float32"
    assert choose_dtype("float16", family(fid), on_gpu=True) == "float16"  # a setting is kept as written
    assert choose_dtype("auto", None, on_gpu=True) == "float16"  # ControlNets, captioner: as before


def test_the_loader_gives_a_bfloat16_family_bfloat16_on_a_gpu(monkeypatch):
    import torch

    from processor.config import ModelSettings
    from processor.models.loader import ModelLoader

    loader = ModelLoader(ModelSettings(dtype="auto"))
    monkeypatch.setattr(loader, "device", lambda: "cuda")
    assert loader.dtype(family(FamilyId.FLUX_DEV)) == torch.bfloat16
    assert loader.dtype(family(FamilyId.SDXL)) == torch.float16 == loader.dtype()


def _match(fid: FamilyId, class_name: str = "Pipeline") -> FamilyMatch:
    return FamilyMatch(family(fid), class_name)


FLOW_ROUNDS = [{"strength": 0.5, "guidance": 0}]


@pytest.mark.parametrize("fid", [FamilyId.FLUX_DEV, FamilyId.FLUX_SCHNELL, FamilyId.SD3, FamilyId.SD3_5])
@pytest.mark.parametrize("key, value", [("refiner", {"model": "stabilityai/stable-diffusion-xl-refiner-1.0"}),
                                        ("turbo", True), ("lcm", {"lora": "x"}), ("control", {"model": "c"}),
                                        ("ip_adapter", {"model": "h94/IP-Adapter"})])
def test_options_a_flow_family_does_not_run_are_refused_naming_style_and_key(fid, key, value):
    style = Img2ImgStyle.model_validate({"model": "m", "rounds": FLOW_ROUNDS, "steps": 2, key: value})
    with pytest.raises(ConfigError, match=rf"^styles\.flow\.{key}: model 'm' is {family(fid).label} "
                                          rf"\(a flow transformer\); {key} .*: drop {key}"):
        refuse_unsupported("flow", style, _match(fid))


def test_unet_families_run_their_options_and_turbo_picks_the_turbo_row():
    turbo = Img2ImgStyle(model="m", turbo=True, steps=2, rounds=FLOW_ROUNDS)
    assert refuse_unsupported("t", turbo, _match(FamilyId.SD)).id is FamilyId.SD_TURBO
    assert refuse_unsupported("t", turbo, _match(FamilyId.SDXL)).id is FamilyId.SDXL_TURBO
    refined = Img2ImgStyle(model="m", refiner={"model": "r"}, lora={"path": "l"})
    assert refuse_unsupported("r", refined, _match(FamilyId.SDXL)).id is FamilyId.SDXL
    with pytest.raises(ConfigError, match=r"styles\.r\.refiner: .* is SD 1\.x / 2\.x .*needs an SDXL base model"):
        refuse_unsupported("r", refined, _match(FamilyId.SD))


def test_every_row_is_complete():
    for row in FAMILIES:
        assert isinstance(row, Family) and row.pipelines and row.text_encoders and row.native_size > 0
        assert row.size_multiple in (8, 16) and row.dtype in ("float16", "bfloat16")
        assert (row.editor is not None) == bool({Task.EDIT, Task.INSTRUCT_PIX2PIX} & set(row.pipelines))
        if row.t5 is not None:
            assert row.prompt_encoder.max_tokens == 77 and row.t5.max_tokens in (256, 512)
    assert family(FamilyId.FLUX_SCHNELL).t5.max_tokens == family(FamilyId.SD3).t5.max_tokens == 256  # type: ignore
    assert family(FamilyId.FLUX_DEV).t5.max_tokens == family(FamilyId.FLUX_KONTEXT).t5.max_tokens == 512  # type: ignore
    assert {StyleOption.REFINER} & family(FamilyId.SDXL).options and not family(FamilyId.SD).options & {
        StyleOption.REFINER}

"""FLUX.1 and Stable Diffusion 3 img2img (``processor.pipeline.img2img`` on a flow family): tiny random-weight
pipelines built offline (``testkit.models.flow``), picked by ``model_index.json``, loaded through
the production loader and run through ``processor run --once`` and the worker."""

from __future__ import annotations

import pytest

from processor.cli.compose import make_engine
from processor.cli.main import main
from processor.config import Img2ImgStyle, ModelSettings, PerformanceSettings
from processor.errors import ConfigError
from processor.models import accel
from processor.models.families import FamilyId
from processor.models.loader import ModelLoader
from processor.pipeline.img2img import Img2ImgEngine
from testkit.images import photo_bytes, photo_image
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of

ROUNDS = [{"strength": 0.75, "guidance": 3.5}, {"strength": 0.5, "guidance": 3.0}]
PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=6)}


def flow_style(model, **extra) -> dict:
    # The scheduler named here is not the flow model's; the engine keeps the model's own.
    return img2img_style(model, rounds=ROUNDS, steps=4, variants=2, size=64) | extra


def test_flux_dev_img2img_runs_through_processor_run_once_and_records_what_ran(tiny_flux, tmp_path, monkeypatch):
    settings = make_settings(tmp_path, {"flux": flow_style(tiny_flux)})
    store_root = settings.store.root
    store_root.mkdir(parents=True)
    (store_root / "inputs").mkdir()
    (store_root / "inputs/toy.jpg").write_bytes(PHOTO["inputs/toy.jpg"])
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0
    from processor.manifest import Manifest

    manifest = Manifest.model_validate_json((store_root / "outputs/toy/manifest.json").read_text())
    assert len(manifest.variants) == 2
    assert len({v.sha256 for v in manifest.variants}) == 2  # own seeds, own pictures
    for v in manifest.variants:
        p = v.parameters
        assert p["family"] == "flux" and p["pipeline"] == "FluxImg2ImgPipeline"
        assert p["scheduler"] == "FlowMatchEulerDiscreteScheduler" and p["guidance_embedded"] is True
        assert p["max_sequence_length"] == 512
        assert p["size"] == "64x48" and p["negative_used"] is False  # multiples of 16, aspect kept
        assert [r["denoising_steps"] for r in p["rounds"]] == [3, 2] and p["denoising_steps"] == 5
        assert p["weights"] == "safetensors" and p["performance"]["offload"] == "none"


def test_sd3_img2img_through_the_worker_uses_its_negative_and_is_reproducible(tiny_sd3, tmp_path):
    runs = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, {"sd3": flow_style(tiny_sd3, size=None)})
        store, layout = drain(settings, PHOTO)
        runs.append(manifest_of(store, layout, "inputs/toy.jpg"))
    assert [v.sha256 for v in runs[0].variants] == [v.sha256 for v in runs[1].variants]
    for v in runs[0].variants:
        p = v.parameters
        assert p["family"] == "sd3" and p["pipeline"] == "StableDiffusion3Img2ImgPipeline"
        assert p["size"] == "64x48"  # native: transformer sample size 8 x VAE factor 8
        assert p["negative"] == "blurry, ugly" and "negative_used" not in p


def test_the_family_comes_from_model_index_and_a_unet_model_keeps_the_unet_engine(tiny_flux, tiny_sd3, tiny_sd):
    loader = ModelLoader(ModelSettings())
    flux = make_engine("f", Img2ImgStyle.model_validate(flow_style(tiny_flux)), loader)
    sd3 = make_engine("s", Img2ImgStyle.model_validate(flow_style(tiny_sd3)), loader)
    plain = make_engine("p", Img2ImgStyle.model_validate(img2img_style(tiny_sd)), loader)
    assert type(flux) is Img2ImgEngine and loader.family(str(tiny_flux)).family.id is FamilyId.FLUX_DEV
    assert type(sd3) is Img2ImgEngine and loader.family(str(tiny_sd3)).family.id is FamilyId.SD3
    assert type(plain) is Img2ImgEngine and loader.family(str(tiny_sd)).family.id is FamilyId.SD


def test_schnell_refuses_guidance_and_runs_with_none(tiny_schnell):
    loader = ModelLoader(ModelSettings())
    guided = make_engine("s", Img2ImgStyle.model_validate(flow_style(tiny_schnell)), loader)
    with pytest.raises(ConfigError, match=r"rounds\[0\].guidance.*set guidance: 0"):
        guided.setup()
    engine = make_engine("s", Img2ImgStyle.model_validate(
        flow_style(tiny_schnell, rounds=[{"strength": 1.0, "guidance": 0}], steps=2, variants=1)), loader)
    engine.setup()
    [variant] = engine(photo_image(96, 96))
    assert variant.parameters["guidance_embedded"] is False and variant.parameters["denoising_steps"] == 2
    assert variant.parameters["max_sequence_length"] == 256  # schnell's T5 length; dev reads 512


@pytest.mark.parametrize("key, value", [("lcm", {"lora": "x"}), ("control", {"model": "y"})])
def test_unet_addons_on_a_flow_model_are_refused_naming_the_key(tiny_flux, key, value):
    rounds = [{"strength": 0.5, "guidance": 1.0}]
    engine = make_engine("f", Img2ImgStyle.model_validate(flow_style(tiny_flux, rounds=rounds) | {key: value}),
                         ModelLoader(ModelSettings()))
    with pytest.raises(ConfigError, match=rf"styles\.f\.{key}: .* is FLUX.*drop {key}"):
        engine.setup()


def test_offload_is_a_noop_on_the_cpu_and_says_so(tiny_sd3):
    performance = PerformanceSettings(offload="model")
    assert accel.resolve(performance, "cpu")["offload"] == "none"
    assert accel.resolve(performance, "cpu")["offload_note"] == "offload model is a no-op on cpu"
    assert accel.resolve(performance, "cuda")["offload"] == "model"
    loader = ModelLoader(ModelSettings(performance={"offload": "sequential"}))
    engine = make_engine("s", Img2ImgStyle.model_validate(flow_style(tiny_sd3, variants=1)), loader)
    engine.setup()
    record = engine(photo_image(64, 64))[0].parameters["performance"]
    assert record["offload"] == "none" and record["offload_note"] == "offload sequential is a no-op on cpu"


def test_a_kontext_edit_runs_through_the_worker_and_records_the_instruction(tiny_kontext, tmp_path):
    style = {"engine": "edit", "model": str(tiny_kontext), "instruction": "Put a waterfall in the background",
             "guidance": 2.5, "steps": 2, "variants": 2, "seed": 3, "size": 64}
    settings = make_settings(tmp_path, {"kontext": style})
    store, layout = drain(settings, PHOTO)
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert len({v.sha256 for v in variants}) == 2
    for i, v in enumerate(variants):
        p = v.parameters
        assert p["engine"] == "edit" and p["pipeline"] == "FluxKontextPipeline"
        assert p["instruction"] == "Put a waterfall in the background" and p["guidance"] == 2.5
        assert p["size"] == "64x48" and p["seed"] == 3 + i and p["denoising_steps"] == 2
        assert p["scheduler"] == "FlowMatchEulerDiscreteScheduler"


def test_edit_refuses_a_model_that_is_not_an_editor(tiny_flux):
    from processor.config import EditStyle

    engine = make_engine("e", EditStyle(model=str(tiny_flux), instruction="make it red"), ModelLoader(ModelSettings()))
    with pytest.raises(ConfigError, match="is a FluxPipeline; engine edit runs FluxKontextPipeline"):
        engine.setup()


def test_a_background_on_a_flow_model_is_refused_with_what_to_set(tiny_sd3, tmp_path):
    from processor.cli.compose import build_registry

    style = flow_style(tiny_sd3, background={"mode": "generate", "prompt": "a beach"})
    registry = build_registry(make_settings(tmp_path, {"sd3": style}))
    with pytest.raises(ConfigError, match=r"has no UNet; text2img .* set background.model"):
        registry.setup(["sd3"])

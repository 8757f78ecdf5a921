"""ControlNet on an img2img style (``styles.<name>.control``): tiny random-weight ControlNets built
from the tiny UNet, loaded through ``processor.models.loader`` and run through the worker."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import ControlSettings, DecodeSettings, Img2ImgStyle, ModelSettings
from processor.errors import ConfigError, ModelUnavailableError, ObjectNotFound
from processor.models.loader import ModelLoader
from processor.pipeline.control_preprocess import canny_map
from processor.pipeline.decode import decode_image
from processor.pipeline.img2img import Img2ImgEngine
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=5)}


def canny(model, **extra) -> dict:
    return {"type": "canny", "model": str(model), "scale": 1.5, "guidance_end": 0.8, "low": 50, "high": 150} | extra


def test_canny_control_runs_through_the_worker_and_records_what_steered(tiny_sd, tiny_controlnet, tmp_path):
    settings = make_settings(tmp_path / "c", {"disney": img2img_style(tiny_sd, control=canny(tiny_controlnet))})
    store, layout = drain(settings, PHOTO)
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    folder = layout.for_input("inputs/toy.jpg").manifest.rsplit("/", 1)[0] + "/"
    # The conditioning image beside the variants is canny of the photo at the working size.
    control_png = Image.open(io.BytesIO(store.get(folder + "control-canny.png").body))
    assert control_png.size == (64, 48)
    photo = decode_image(PHOTO["inputs/toy.jpg"], DecodeSettings(), name="toy.jpg").image
    expected = canny_map(photo.resize((64, 48), Image.Resampling.LANCZOS), 50, 150)
    assert np.array_equal(np.asarray(control_png), np.asarray(expected))
    assert np.asarray(expected).any()  # the toy has edges: the map is not blank
    for v in manifest.variants:
        assert v.parameters["pipeline"] == "StableDiffusionControlNetImg2ImgPipeline"
        [c] = v.control
        assert (c.type, c.model, c.scale, c.guidance_end) == ("canny", str(tiny_controlnet), 1.5, 0.8)
        assert c.revision is None and c.settings == {"low": 50, "high": 150}
        assert c.image == folder + "control-canny.png"
        text = Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"]
        assert (f'ControlNet 0: "Module: canny, Model: {tiny_controlnet}, Weight: 1.5, Guidance Start: 0, '
                f'Guidance End: 0.8, Low: 50, High: 150"') in text

    # The same style without control gives other pixels: the ControlNet really steered the UNet.
    free = make_settings(tmp_path / "f", {"disney": img2img_style(tiny_sd)})
    store2, layout2 = drain(free, PHOTO)
    free_variants = manifest_of(store2, layout2, "inputs/toy.jpg").variants
    assert [v.sha256 for v in free_variants] != [v.sha256 for v in manifest.variants]
    assert all(not v.control for v in free_variants)
    with pytest.raises(ObjectNotFound):
        store2.head(folder + "control-canny.png")


def test_several_controlnets_share_the_base_and_each_is_recorded(tiny_sd, tiny_controlnet, tiny_controlnet_b,
                                                                 tmp_path):
    controls = [canny(tiny_controlnet), canny(tiny_controlnet_b, scale=0.5, guidance_end=1.0, low=20, high=60)]
    styles = {"held": img2img_style(tiny_sd, control=controls), "free": img2img_style(tiny_sd, variants=1)}
    settings = make_settings(tmp_path, styles)
    registry = build_registry(settings)
    held, free = registry.engine("held"), registry.engine("free")
    assert held.pipe.unet is free.pipe.unet and held.pipe.vae is free.pipe.vae  # from_pipe: one copy of the base
    assert type(held.pipe.controlnet).__name__ == "MultiControlNetModel"
    store, layout = drain(settings, PHOTO, registry)
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    held_variants = [v for v in manifest.variants if v.style == "held"]
    assert len(held_variants) == 3
    for v in held_variants:
        assert [(c.model, c.scale, c.settings["low"]) for c in v.control] == [
            (str(tiny_controlnet), 1.5, 50), (str(tiny_controlnet_b), 0.5, 20)]
        # Two canny maps with different thresholds: two files, neither overwriting the other.
        assert v.control[0].image.endswith("/control-canny.png")
        assert v.control[1].image.endswith("/held-control-canny.png")
    assert store.get(held_variants[0].control[0].image).body != store.get(held_variants[0].control[1].image).body
    assert all(not v.control for v in manifest.variants if v.style == "free")


def test_a_background_stage_keeps_the_control_record(tiny_sd, tiny_controlnet, tmp_path):
    style = img2img_style(tiny_sd, variants=2, control=canny(tiny_controlnet),
                          background={"mode": "generate", "prompt": "a sunny beach"})
    store, layout = drain(make_settings(tmp_path, {"beach": style}), {"inputs/toy.jpg": scene_photo()})
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.background is not None and v.background.mode == "generate"
        assert [c.model for c in v.control] == [str(tiny_controlnet)]


def scene_photo() -> bytes:
    """A toy on a plain wall that GrabCut finds (the background stage needs a usable mask)."""
    from testkit.scenes import scene

    buffer = io.BytesIO()
    scene(160, 120, seed=1).image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_control_takes_one_mapping_or_a_list_and_checks_thresholds(tiny_sd):
    one = Img2ImgStyle(model="m", control={"model": "c"})
    assert [c.model for c in one.control] == ["c"] and one.control[0].type == "canny"
    assert len(Img2ImgStyle(model="m", control=[{"model": "a"}, {"model": "b"}]).control) == 2
    with pytest.raises(ValueError, match="low 200 must be below high 100"):
        ControlSettings(model="c", low=200, high=100)
    with pytest.raises(ValueError, match="type"):
        ControlSettings(model="c", type="depth")


def test_missing_controlnet_fails_at_start_naming_it(tiny_sd, tmp_path):
    style = Img2ImgStyle(model=str(tiny_sd), control={"model": str(tmp_path / "no-such-controlnet")})
    with pytest.raises(ModelUnavailableError, match=r"no-such-controlnet.*config\.json"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


def test_offline_hub_controlnet_not_in_cache_names_the_pull_command(tiny_sd, tmp_path):
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "empty-cache"))
    style = Img2ImgStyle(model=str(tiny_sd), control={"model": "lllyasviel/sd-controlnet-canny"})
    with pytest.raises(ModelUnavailableError, match="processor models pull") as info:
        Img2ImgEngine("x", style, loader).setup()
    assert "lllyasviel/sd-controlnet-canny" in str(info.value)


def test_controlnet_of_another_family_is_a_config_error(tiny_sdxl, tiny_controlnet):
    style = Img2ImgStyle(model=str(tiny_sdxl), control={"model": str(tiny_controlnet)})
    with pytest.raises(ConfigError, match="does not fit model"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


def test_models_pull_fetches_the_controlnet_as_safetensors(tmp_path, monkeypatch, capsys):
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"]}))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(index))
    calls = []

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs))
        folder = tmp_path / "snapshots" / repo.replace("/", "--") / "0123abc"
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        (folder / "unet" / "diffusion_pytorch_model.safetensors").touch()
        (folder / "config.json").touch()
        (folder / "diffusion_pytorch_model.safetensors").touch()
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    style = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion",
             "control": {"model": "lllyasviel/sd-controlnet-canny", "revision": "feedbee"}}
    make_settings(tmp_path, {"held": style}, models={"cache_dir": str(tmp_path / "cache")})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == 0
    repo, kwargs = calls[-1]
    assert repo == "lllyasviel/sd-controlnet-canny" and kwargs["revision"] == "feedbee"
    assert kwargs["allow_patterns"] == ["*.safetensors", "*.json"] and kwargs["local_files_only"] is False
    assert "controlnet lllyasviel/sd-controlnet-canny@feedbee:" in capsys.readouterr().out


def test_three_maps_of_one_type_in_one_style_get_three_files():
    """Names stay distinct past the ``<style>-`` prefix: a third canny map must not overwrite the second."""
    from types import SimpleNamespace

    from processor.pipeline.outputs import _control_files

    maps = [SimpleNamespace(type="canny", image=Image.new("L", (8, 8), shade)) for shade in (0, 100, 200)]
    variant = SimpleNamespace(style="held", control=maps)
    files = _control_files([variant], 1)  # type: ignore[list-item]
    assert sorted(f.name for f in files.values()) == [
        "control-canny.png", "held-control-canny-2.png", "held-control-canny.png"]

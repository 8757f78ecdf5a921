"""SDXL img2img with a refiner as the last round (``styles.<name>.refiner``) and turbo few-step
styles (``turbo: true``): tiny random-weight SDXL base and refiner built offline from configs,
loaded through ``processor.models.loader`` and run through the worker."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import Img2ImgStyle, ModelSettings
from processor.errors import ConfigError
from processor.models.loader import ModelLoader
from processor.models.pull_list import configured_models
from processor.pipeline.img2img import Img2ImgEngine
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=6)}
XL_ROUNDS = [{"strength": 0.6, "guidance": 5.0}]


def run_once(settings, inputs: dict[str, bytes]) -> tuple[LocalStore, KeyLayout]:
    """``processor run --once`` over ``inputs`` with the config ``make_settings`` wrote."""
    store = LocalStore(settings.store.root)
    for key, data in inputs.items():
        store.put(key, data)
    config = settings.store.root.parent / "config.yaml"
    assert main(["run", "--once", "--metrics-port", "0", "--config", str(config)]) == 0
    return store, KeyLayout(settings.prefixes)


def refiner(model, **extra) -> dict:
    return {"model": str(model), "strength": 0.5, "steps": 4, "guidance": 3.0} | extra


def test_sdxl_refiner_runs_as_the_last_round_sharing_the_base_vae_and_text_encoder(tiny_sdxl, tiny_sdxl_refiner,
                                                                                    tmp_path):
    styles = {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2, refiner=refiner(tiny_sdxl_refiner))}
    settings = make_settings(tmp_path / "r", styles)
    registry = build_registry(settings)
    engine = registry.engine("xl")
    assert isinstance(engine, Img2ImgEngine) and engine.refiner_pipe is not None
    assert type(engine.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert type(engine.refiner_pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    # diffusers' refiner pattern: the base's modules passed in, not loaded a second time.
    assert engine.refiner_pipe.vae is engine.pipe.vae
    assert engine.refiner_pipe.text_encoder_2 is engine.pipe.text_encoder_2
    assert engine.refiner_pipe.text_encoder is None and engine.refiner_pipe.unet is not engine.pipe.unet
    store, layout = run_once(settings, PHOTO)
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert len(variants) == 2
    for i, v in enumerate(variants):
        p = v.parameters
        base_round, last = p["rounds"]
        assert base_round["denoising_steps"] == 2 and "refiner" not in base_round
        assert last["refiner"] is True and last["model"] == str(tiny_sdxl_refiner) and last["revision"] is None
        assert (last["strength"], last["steps"], last["guidance"], last["denoising_steps"]) == (0.5, 4, 3.0, 2)
        assert last["seed"] == 7 + i + 1_000_003 and last["shared"] is False
        assert p["denoising_steps"] == 4 and p["denoising_steps_all_variants"] == 8
        text = Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"]
        assert text.endswith(f", Refiner: {tiny_sdxl_refiner}")

    # The same style without the refiner gives other pixels: the refiner round really ran.
    plain = make_settings(tmp_path / "p", {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2)})
    store2, layout2 = drain(plain, PHOTO)
    free = manifest_of(store2, layout2, "inputs/toy.jpg").variants
    assert [v.sha256 for v in free] != [v.sha256 for v in variants]
    assert all(len(v.parameters["rounds"]) == 1 for v in free)


def test_a_refiner_on_an_sd_1x_model_is_a_config_error_naming_the_fix(tiny_sd, tiny_sdxl_refiner):
    style = Img2ImgStyle.model_validate(img2img_style(tiny_sd, refiner=refiner(tiny_sdxl_refiner)))
    with pytest.raises(ConfigError, match="needs an SDXL base model"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


def test_refiner_settings_refuse_zero_denoising_steps():
    with pytest.raises(ValueError, match=r"refiner: strength 0\.2 with steps 4 gives 0 denoising steps"):
        Img2ImgStyle(model="m", refiner={"model": "r", "strength": 0.2, "steps": 4})


def test_models_pull_fetches_the_refiner(tmp_path, monkeypatch, capsys):
    style = {"engine": "img2img", "model": "stabilityai/stable-diffusion-xl-base-1.0",
             "refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0", "revision": "beef"}}
    settings = make_settings(tmp_path, {"xl": style})
    assert configured_models(settings.styles) == [("stabilityai/stable-diffusion-xl-base-1.0", None),
                                                  ("stabilityai/stable-diffusion-xl-refiner-1.0", "beef")]
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"]}))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(index))
    calls = []

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs))
        folder = tmp_path / "snapshots" / repo.replace("/", "--") / "0123abc"
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        (folder / "unet" / "diffusion_pytorch_model.safetensors").touch()
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    make_settings(tmp_path, {"xl": style}, models={"cache_dir": str(tmp_path / "cache")})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == 0
    pulled = {repo: kwargs["revision"] for repo, kwargs in calls}
    assert pulled["stabilityai/stable-diffusion-xl-refiner-1.0"] == "beef"
    assert "stabilityai/stable-diffusion-xl-refiner-1.0@beef:" in capsys.readouterr().out


def test_a_refiner_that_does_not_read_the_base_text_encoder_is_a_config_error(tiny_sdxl):
    # An SDXL base as "refiner": its UNet reads both encoders (width 64), the refiner pattern gives it one (32).
    style = Img2ImgStyle.model_validate(img2img_style(tiny_sdxl, refiner=refiner(tiny_sdxl)))
    with pytest.raises(ConfigError, match=r"does not fit base.*use the refiner trained with this base"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()

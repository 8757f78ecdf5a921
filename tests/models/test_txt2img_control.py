"""``control`` on ``engine: txt2img`` styles: ControlNets and T2I-Adapters through the same keys,
with tiny random-weight models, through ``processor run --once`` (the production path)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from processor.cli.main import main
from processor.config import ModelSettings, Txt2ImgStyle
from processor.config.styles import Img2ImgStyle
from processor.errors import ConfigError
from processor.manifest import Control
from processor.models.loader import ModelLoader
from processor.pipeline.control_preprocess import canny_map
from processor.pipeline.decode import decode_image
from processor.pipeline.encode import PARAMETERS_KEY
from processor.pipeline.img2img import Img2ImgEngine
from processor.pipeline.txt2img import Txt2ImgEngine
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.models.test_diffusion import make_settings, manifest_of
from tests.models.test_txt2img import txt2img_style

#: 2:1, so the working size (64 x 32) is a multiple of the tiny adapters' 16 px too.
WIDE = photo_bytes(200, 100, seed=5)


def canny(model, **extra) -> dict:
    return {"type": "canny", "model": str(model), "scale": 1.0, "low": 50, "high": 150} | extra


def run_once(tmp_path, styles: dict, photo: bytes = WIDE):
    """``processor run --once`` over one photo; the store, and the photo's manifest."""
    settings = make_settings(tmp_path, styles)
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.jpg", photo)
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml"), "--metrics-port", "0"]) == 0
    return store, manifest_of(store, KeyLayout(settings.prefixes), "inputs/toy.jpg")


def infotext(store, variant) -> str:
    return Image.open(io.BytesIO(store.get(variant.key).body)).text[PARAMETERS_KEY]


def test_sd_txt2img_with_a_canny_controlnet_keeps_the_outline_and_records_it(tiny_sd, tiny_controlnet, tmp_path):
    style = txt2img_style(tiny_sd, steps=2, control=canny(tiny_controlnet, guidance_end=0.5))
    store, manifest = run_once(tmp_path / "held", {"fresh": style})
    photo = decode_image(WIDE, _decode_settings(), name="toy.jpg").image
    expected = canny_map(photo.resize((64, 32), Image.Resampling.LANCZOS), 50, 150)
    for v in manifest.variants:
        assert v.parameters["pipeline"] == "StableDiffusionControlNetPipeline" and (v.width, v.height) == (64, 32)
        [c] = v.control
        assert (c.kind, c.type, c.model, c.scale, c.guidance_end) == ("controlnet", "canny", str(tiny_controlnet),
                                                                      1.0, 0.5)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(store.get(c.image).body))), np.asarray(expected))
        assert c.image.endswith("/control-canny.png")
        text = infotext(store, v)
        assert f"ControlNet 0: \"Module: canny, Model: {tiny_controlnet}, Weight: 1, Guidance Start: 0, " in text
        assert "Kind:" not in text
    # Same prompt and seeds without control: other pixels, so the ControlNet steered the UNet.
    _, free = run_once(tmp_path / "free", {"fresh": txt2img_style(tiny_sd, steps=2)})
    assert [v.sha256 for v in free.variants] != [v.sha256 for v in manifest.variants]


def test_sd_txt2img_with_a_t2i_adapter_runs_the_adapter_pipeline(tiny_sd_for_adapter, tiny_t2i_adapter, tmp_path):
    style = txt2img_style(tiny_sd_for_adapter, steps=2, control=canny(tiny_t2i_adapter, scale=0.8))
    store, manifest = run_once(tmp_path / "on", {"fresh": style})
    for v in manifest.variants:
        assert v.parameters["pipeline"] == "StableDiffusionAdapterPipeline" and (v.width, v.height) == (64, 32)
        [c] = v.control
        assert (c.kind, c.model, c.scale, c.guidance_end) == ("t2i-adapter", str(tiny_t2i_adapter), 0.8, 1.0)
        assert store.head(c.image).size > 0
        assert [(u.role, u.model) for u in v.licenses][1] == ("control", str(tiny_t2i_adapter))
        text = infotext(store, v)
        assert f"ControlNet 0: \"Module: canny, Model: {tiny_t2i_adapter}, Weight: 0.8" in text
        assert "Kind: t2i-adapter" in text
    # Scale 0 switches the adapter off: other pixels than scale 0.8, same seeds.
    off = txt2img_style(tiny_sd_for_adapter, steps=2, control=canny(tiny_t2i_adapter, scale=0.0))
    _, unsteered = run_once(tmp_path / "off", {"fresh": off})
    assert [v.sha256 for v in unsteered.variants] != [v.sha256 for v in manifest.variants]


def test_two_t2i_adapters_run_as_one_multi_adapter(tiny_sd_for_adapter, tiny_t2i_adapter, tiny_t2i_adapter_b,
                                                    tmp_path):
    controls = [canny(tiny_t2i_adapter), canny(tiny_t2i_adapter_b, scale=0.5, low=20, high=60)]
    store, manifest = run_once(tmp_path, {"fresh": txt2img_style(tiny_sd_for_adapter, steps=2, variants=3,
                                                                  control=controls)})
    assert len(manifest.variants) == 3
    for v in manifest.variants:
        assert [(c.kind, c.model, c.scale) for c in v.control] == [
            ("t2i-adapter", str(tiny_t2i_adapter), 1.0), ("t2i-adapter", str(tiny_t2i_adapter_b), 0.5)]
        assert "ControlNet 1:" in infotext(store, v)
    first = manifest.variants[0].control
    assert store.get(first[0].image).body != store.get(first[1].image).body
    engine = Txt2ImgEngine("x", Txt2ImgStyle.model_validate(txt2img_style(tiny_sd_for_adapter, control=controls)),
                           ModelLoader(ModelSettings()))
    engine.setup()
    assert type(engine.pipe.adapter).__name__ == "MultiAdapter"


def test_sdxl_txt2img_with_a_t2i_adapter_stops_it_at_guidance_end(tiny_sdxl, tiny_t2i_adapter_xl, tmp_path):
    style = txt2img_style(tiny_sdxl, steps=2, variants=1, control=canny(tiny_t2i_adapter_xl, guidance_end=0.5))
    store, manifest = run_once(tmp_path, {"fresh": style})
    [v] = manifest.variants
    assert v.parameters["pipeline"] == "StableDiffusionXLAdapterPipeline"
    assert [(c.kind, c.guidance_end) for c in v.control] == [("t2i-adapter", 0.5)]
    assert "Guidance End: 0.5" in infotext(store, v)


def _setup_error(engine_cls, style) -> str:
    with pytest.raises(ConfigError) as info:
        engine_cls("toon-x", style, ModelLoader(ModelSettings())).setup()
    return str(info.value)


def test_a_t2i_adapter_on_an_img2img_style_is_refused_at_start(tiny_sd_for_adapter, tiny_t2i_adapter):
    style = Img2ImgStyle(model=str(tiny_sd_for_adapter), control=canny(tiny_t2i_adapter))
    message = _setup_error(Img2ImgEngine, style)
    assert "styles.toon-x" in message and "diffusers has no img2img adapter pipeline" in message
    assert "engine: txt2img" in message


def test_mixed_kinds_and_unknown_models_are_refused(tiny_sd, tiny_controlnet, tiny_t2i_adapter):
    mixed = Txt2ImgStyle(model=str(tiny_sd), control=[canny(tiny_controlnet), canny(tiny_t2i_adapter)])
    message = _setup_error(Txt2ImgEngine, mixed)
    assert "styles.toon-x.control mixes ControlNets and T2I-Adapters" in message
    # A UNet folder has config.json and safetensors, but is neither kind.
    neither = Txt2ImgStyle(model=str(tiny_sd), control=canny(tiny_sd / "unet"))
    assert "'UNet2DConditionModel'" in _setup_error(Txt2ImgEngine, neither)


def test_an_sd_adapter_cannot_stop_early_and_families_must_match(tiny_sd_for_adapter, tiny_sdxl, tiny_t2i_adapter,
                                                                  tiny_t2i_adapter_xl):
    early = Txt2ImgStyle(model=str(tiny_sd_for_adapter), control=canny(tiny_t2i_adapter, guidance_end=0.8))
    message = _setup_error(Txt2ImgEngine, early)
    assert "styles.toon-x.control: guidance_end 0.8" in message and "SD 1.x adapter pipeline" in message
    xl_on_sd = Txt2ImgStyle(model=str(tiny_sd_for_adapter), control=canny(tiny_t2i_adapter_xl))
    assert "is for SDXL" in _setup_error(Txt2ImgEngine, xl_on_sd)
    sd_on_xl = Txt2ImgStyle(model=str(tiny_sdxl), control=canny(tiny_t2i_adapter))
    assert "is for SD 1.x" in _setup_error(Txt2ImgEngine, sd_on_xl)


def test_control_records_of_old_manifests_parse_as_controlnets():
    old = {"type": "canny", "model": "lllyasviel/sd-controlnet-canny", "scale": 1.0, "guidance_end": 1.0,
           "image": "outputs/toy/control-canny.png"}
    assert Control.model_validate(old).kind == "controlnet"
    assert json.loads(Control.model_validate(old | {"kind": "t2i-adapter"}).model_dump_json())["kind"] == "t2i-adapter"
    assert [c.model for c in Txt2ImgStyle(model="m", control={"model": "a"}).control] == ["a"]


def _decode_settings():
    from processor.config import DecodeSettings

    return DecodeSettings()


def test_models_pull_fetches_a_t2i_adapter_like_a_controlnet(tmp_path, monkeypatch, capsys):
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"]}))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(index))
    calls = []

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs))
        folder = tmp_path / "snapshots" / repo.replace("/", "--") / "0123abc"
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        for name in ("unet/diffusion_pytorch_model.safetensors", "config.json", "diffusion_pytorch_model.safetensors"):
            (folder / name).touch()
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    style = {"engine": "txt2img", "model": "nitrosocke/mo-di-diffusion",
             "control": {"model": "TencentARC/t2iadapter_canny_sd15v2", "revision": "feedbee", "license": "apache-2.0"}}
    make_settings(tmp_path, {"fresh": style}, models={"cache_dir": str(tmp_path / "cache")})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == 0
    repo, kwargs = calls[-1]
    assert (repo, kwargs["revision"]) == ("TencentARC/t2iadapter_canny_sd15v2", "feedbee")
    assert kwargs["allow_patterns"] == ["*.safetensors", "*.json"]
    assert "TencentARC/t2iadapter_canny_sd15v2@feedbee:" in capsys.readouterr().out


def test_an_adapters_license_is_recorded_as_a_controlnets():
    from processor.config.licenses import style_licenses

    style = Txt2ImgStyle(model="m", license="creativeml-openrail-m",
                         control={"model": "TencentARC/t2iadapter_canny_sd15v2", "license": "apache-2.0"})
    assert [(u.role, u.model, u.license) for u in style_licenses(style)] == [
        ("model", "m", "creativeml-openrail-m"), ("control", "TencentARC/t2iadapter_canny_sd15v2", "apache-2.0")]


def test_a_grayscale_adapter_gets_a_one_channel_map(tiny_sd_for_adapter, tmp_path):
    from testkit.models.adapter import build_t2i_adapter

    gray = build_t2i_adapter(tmp_path / "gray-adapter", in_channels=1)
    style = Txt2ImgStyle.model_validate(txt2img_style(tiny_sd_for_adapter, steps=2, variants=2, control=canny(gray)))
    engine = Txt2ImgEngine("gray", style, ModelLoader(ModelSettings()))
    engine.setup()
    photo = decode_image(WIDE, _decode_settings(), name="toy.jpg").image
    variants = engine(photo)
    assert len(variants) == 2 and variants[0].image.size == (64, 32)
    assert variants[0].control[0].image.mode == "RGB"  # the recorded map is the canny image as made


def test_sdxl_txt2img_with_a_controlnet_and_a_list_of_sd_controlnets(tiny_sdxl, tiny_sd, tiny_controlnet,
                                                                     tiny_controlnet_b, tmp_path):
    from testkit.models.sd import build_controlnet

    xl_net = build_controlnet(tmp_path / "xl-controlnet", tiny_sdxl / "unet")
    style = txt2img_style(tiny_sdxl, steps=2, variants=1, control=canny(xl_net, guidance_end=0.5))
    _, manifest = run_once(tmp_path / "xl", {"fresh": style})
    [v] = manifest.variants
    assert v.parameters["pipeline"] == "StableDiffusionXLControlNetPipeline"
    assert [(c.kind, c.guidance_end) for c in v.control] == [("controlnet", 0.5)]
    # A list of ControlNets is one MultiControlNet, each entry recorded.
    both = Txt2ImgStyle.model_validate(txt2img_style(tiny_sd, steps=2, control=[canny(tiny_controlnet),
                                                                                canny(tiny_controlnet_b, scale=0.5)]))
    engine = Txt2ImgEngine("two", both, ModelLoader(ModelSettings()))
    engine.setup()
    assert type(engine.pipe.controlnet).__name__ == "MultiControlNetModel"
    variants = engine(decode_image(WIDE, _decode_settings(), name="toy.jpg").image)
    assert [[c.scale for c in v.control] for v in variants] == [[1.0, 0.5], [1.0, 0.5]]

"""IP-Adapter style images (``styles.<name>.style_image`` + ``ip_adapter``): a tiny random-weight
IP-Adapter and CLIP image encoder built offline for the tiny UNets (``testkit.models.ip_adapter``),
loaded through ``load_ip_adapter`` by the production path and run through ``processor run --once``."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import Img2ImgStyle, IpAdapterSettings, load_settings
from processor.errors import ConfigError, ModelUnavailableError
from processor.manifest import FailureRecord
from processor.models.ip_adapter import resolve_files
from processor.models.loader import ModelLoader
from processor.pipeline.encode import a1111_parameters, infotext_parameters
from processor.pipeline.ip_adapter import a1111_unit
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from testkit.models.ip_adapter import WEIGHT_NAME, build_ip_adapter
from tests.models.test_diffusion import img2img_style, make_settings, manifest_of
from tests.models.test_infotext import parse_infotext
from tests.models.test_sdxl import XL_ROUNDS, run_once

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=5)}
#: The picture of the look wanted: another image than the photo, PNG.
LOOK = photo_bytes(96, 96, fmt="PNG", seed=11)
LOOK_KEY = "styles/look.png"
#: InstantStyle on the tiny UNet: its attention blocks are down.block_1 (1 layer), up.block_0 (2).
INSTANT = {"down": {"block_1": [0.0]}, "up": {"block_0": [0.0, 1.0]}}


def ip_adapter(folder, **extra) -> dict:
    return {"model": str(folder), "weight_name": WEIGHT_NAME, "scale": 0.8} | extra


def styled(model, folder, **extra) -> dict:
    return img2img_style(model, **{"variants": 2, "style_image": f"bucket:{LOOK_KEY}",
                                   "ip_adapter": ip_adapter(folder)} | extra)


def put_look(settings, data: bytes = LOOK) -> None:
    LocalStore(settings.store.root).put(LOOK_KEY, data)


def shas(store, layout, style: str | None = None) -> list[str]:
    return [v.sha256 for v in manifest_of(store, layout, "inputs/toy.jpg").variants if style in (None, v.style)]


@pytest.fixture(scope="module")
def tiny_ip_adapter_xl(tiny_sdxl, tmp_path_factory):
    """An IP-Adapter for the tiny SDXL UNet (text width 64)."""
    return build_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter-xl", tiny_sdxl / "unet")


def test_style_image_steers_the_variants_and_every_variant_records_it(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path / "ip", {"look": styled(tiny_sd, tiny_ip_adapter)})
    put_look(settings)
    store, layout = run_once(settings, PHOTO)
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    weights_sha = hashlib.sha256((tiny_ip_adapter / "models" / WEIGHT_NAME).read_bytes()).hexdigest()
    assert len(manifest.variants) == 2
    for v in manifest.variants:
        record = v.parameters["ip_adapter"]
        assert record["model"] == str(tiny_ip_adapter) and record["revision"] is None
        assert (record["subfolder"], record["weight_name"]) == ("models", WEIGHT_NAME)
        assert record["hash"] == weights_sha[:12]
        assert record["image_encoder"] == f"{tiny_ip_adapter}/models/image_encoder"
        assert record["scale"] == 0.8
        assert record["style_image"] == f"bucket:{LOOK_KEY}"
        assert record["style_image_sha256"] == hashlib.sha256(LOOK).hexdigest()
        assert record["style_image_etag"] == store.head(LOOK_KEY).etag
        assert any(r.role == "ip_adapter" and r.model == str(tiny_ip_adapter) for r in v.licenses)
        # The PNG text carries it as A1111's ControlNet extension writes an IP-Adapter unit.
        info = parse_infotext(Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"])
        assert info["ControlNet 0"] == (f"Module: ip-adapter_clip, Model: ip-adapter_tiny [{weights_sha[:8]}], "
                                        f"Weight: 0.8, Guidance Start: 0, Guidance End: 1, "
                                        f"Style Image Hash: {hashlib.sha256(LOOK).hexdigest()[:10]}")

    # Same seeds without the style image: other pixels, so the picture really steered the UNet...
    free = make_settings(tmp_path / "free", {"look": img2img_style(tiny_sd, variants=2)})
    store2, layout2 = run_once(free, PHOTO)
    assert shas(store2, layout2) != shas(store, layout)
    assert all("ip_adapter" not in v.parameters for v in manifest_of(store2, layout2, "inputs/toy.jpg").variants)
    # ...and another picture gives other pixels again (the image, not just the adapter, matters).
    other = make_settings(tmp_path / "other", {"look": styled(tiny_sd, tiny_ip_adapter)})
    put_look(other, photo_bytes(96, 96, fmt="PNG", seed=12))
    store3, layout3 = run_once(other, PHOTO)
    assert shas(store3, layout3) not in (shas(store, layout), shas(store2, layout2))


def test_a_style_without_the_adapter_on_the_same_unet_is_untouched(tiny_sd, tiny_ip_adapter, tmp_path):
    """The UNet is shared (from_pipe): the adapter is in it only during its own style's calls."""
    alone = make_settings(tmp_path / "alone", {"plain": img2img_style(tiny_sd, variants=2)})
    store, layout = run_once(alone, PHOTO)
    both = make_settings(tmp_path / "both", {"look": styled(tiny_sd, tiny_ip_adapter),
                                              "plain": img2img_style(tiny_sd, variants=2)})
    put_look(both)
    registry = build_registry(both)
    look, plain = registry.engine("look"), registry.engine("plain")
    assert look.pipe.unet is plain.pipe.unet
    assert plain.pipe.unet.encoder_hid_proj is None  # at rest the shared UNet has no adapter in it
    store2, layout2 = run_once(both, PHOTO)
    assert shas(store2, layout2, "plain") == shas(store, layout)
    assert shas(store2, layout2, "look") != shas(store, layout)


def test_instantstyle_block_scales_reach_the_attention_layers(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path / "i", {"look": styled(tiny_sd, tiny_ip_adapter)})
    put_look(settings)
    uniform = run_once(settings, PHOTO)
    settings = make_settings(tmp_path / "s", {"look": styled(tiny_sd, tiny_ip_adapter,
                                                             ip_adapter=ip_adapter(tiny_ip_adapter, scale=INSTANT))})
    put_look(settings)
    store, layout = run_once(settings, PHOTO)
    assert shas(store, layout) != shas(*uniform)
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.parameters["ip_adapter"]["scale"] == INSTANT
        info = parse_infotext(Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"])
        assert "Weight: 1, Block Weights: down.block_1=0 up.block_0=0/1," in info["ControlNet 0"]

    # While a call runs, each IP-Adapter processor holds the scale its block was given (mid: 0).
    registry = build_registry(settings)
    engine = registry.engine("look")
    seen = {}

    def spy(pipe, step, timestep, kwargs):
        for name, proc in pipe.unet.attn_processors.items():
            if hasattr(proc, "scale"):
                seen[name] = list(proc.scale)
        return kwargs

    with engine.ip_adapter.active(engine.pipe):
        engine.pipe(prompt="a toy", image=Image.new("RGB", (64, 64)), strength=0.5, num_inference_steps=2,
                    ip_adapter_image=engine.ip_adapter.style_image.image, callback_on_step_end=spy)
    assert seen == {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor": [0.0],
                    "mid_block.attentions.0.transformer_blocks.0.attn2.processor": [0.0],
                    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": [0.0],
                    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor": [1.0]}


def test_a_controlnet_style_takes_a_style_image_too(tiny_sd, tiny_ip_adapter, tiny_controlnet, tmp_path):
    control = {"model": str(tiny_controlnet), "scale": 1.0}
    settings = make_settings(tmp_path / "c", {"held": styled(tiny_sd, tiny_ip_adapter, control=control)})
    put_look(settings)
    store, layout = run_once(settings, PHOTO)
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert [v.parameters["pipeline"] for v in variants] == ["StableDiffusionControlNetImg2ImgPipeline"] * 2
    info = parse_infotext(Image.open(io.BytesIO(store.get(variants[0].key).body)).text["parameters"])
    assert info["ControlNet 0"].startswith("Module: canny") and info["ControlNet 1"].startswith("Module: ip-adapter")
    free = make_settings(tmp_path / "f", {"held": img2img_style(tiny_sd, variants=2, control=control)})
    assert shas(*run_once(free, PHOTO)) != shas(store, layout)


def test_a_compiled_unet_is_refused_naming_both_keys(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path, {"look": styled(tiny_sd, tiny_ip_adapter)},
                             models={"performance": {"compile_unet": True}})
    put_look(settings)
    with pytest.raises(ConfigError, match=r"styles\.look\.ip_adapter does not work with "
                                          r"models\.performance\.compile_unet"):
        build_registry(settings).setup(["look"])


def test_sdxl_img2img_takes_a_style_image(tiny_sdxl, tiny_ip_adapter_xl, tmp_path):
    settings = make_settings(tmp_path / "xl", {"xl": styled(tiny_sdxl, tiny_ip_adapter_xl, rounds=XL_ROUNDS)})
    put_look(settings)
    store, layout = run_once(settings, PHOTO)
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert [v.parameters["pipeline"] for v in variants] == ["StableDiffusionXLImg2ImgPipeline"] * 2
    assert all(v.parameters["ip_adapter"]["model"] == str(tiny_ip_adapter_xl) for v in variants)
    free = make_settings(tmp_path / "free", {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2)})
    assert shas(*run_once(free, PHOTO)) != shas(store, layout)


def test_an_unreadable_style_image_stops_the_worker_at_start_naming_style_and_key(tiny_sd, tiny_ip_adapter,
                                                                                  tmp_path, capsys):
    missing = make_settings(tmp_path / "m", {"look": styled(tiny_sd, tiny_ip_adapter)})
    config = str(tmp_path / "m" / "config.yaml")
    store = LocalStore(missing.store.root)
    store.put("inputs/toy.jpg", PHOTO["inputs/toy.jpg"])
    assert main(["run", "--once", "--metrics-port", "0", "--config", config]) == 3  # EXIT_CONFIG
    err = capsys.readouterr().err
    assert "styles.look.style_image" in err and f"bucket:{LOOK_KEY}" in err and "cannot be read" in err
    put_look(missing, b"GIF89a this is not a picture at all" * 4)
    assert main(["run", "--once", "--metrics-port", "0", "--config", config]) == 3
    err = capsys.readouterr().err
    assert "styles.look.style_image" in err and "is not a usable picture" in err
    # Nothing was lost: the input was not failed, it waits for a worker that can run the style.
    assert not list(store.list("failed/")) and not list(store.list("outputs/"))
    assert store.head("inputs/toy.jpg").size == len(PHOTO["inputs/toy.jpg"])


def test_a_sidecar_style_whose_image_is_bad_fails_that_input_only(tiny_sd, tiny_ip_adapter, tmp_path):
    """A style asked for by one input (not in run.styles) loads late: its bad image fails that input."""
    settings = make_settings(tmp_path, {"toon": {"engine": "toon", "variants": 1},
                                        "look": styled(tiny_sd, tiny_ip_adapter)}, run_styles=["toon"])
    inputs = {"inputs/toy.jpg": PHOTO["inputs/toy.jpg"], "inputs/toy.json": json.dumps({"styles": ["look"]}).encode()}
    store = LocalStore(settings.store.root)
    for key, data in inputs.items():
        store.put(key, data)
    # The worker goes on (exit 0): the failure is that input's, recorded with what to change.
    assert main(["run", "--once", "--metrics-port", "0", "--config", str(tmp_path / "config.yaml")]) == 0
    record = FailureRecord.model_validate_json(store.get("failed/toy.jpg.json").body)
    assert "styles.look.style_image" in record.message and LOOK_KEY in record.message


def test_a_local_style_image_path_works_and_a_missing_one_is_named(tiny_sd, tiny_ip_adapter, tmp_path):
    look = tmp_path / "look.png"
    look.write_bytes(LOOK)
    style = Img2ImgStyle(**styled(tiny_sd, tiny_ip_adapter) | {"style_image": str(look)})
    registry = build_registry(make_settings(tmp_path / "l", {"look": style.model_dump()}))
    assert registry.engine("look").ip_adapter.record()["style_image"] == str(look)
    with pytest.raises(ConfigError, match=r"styles\.look\.style_image .*nope\.png.* cannot be read"):
        bad = make_settings(tmp_path / "b", {"look": style.model_dump() | {"style_image": str(tmp_path / "nope.png")}})
        build_registry(bad).setup(["look"])


def test_bad_ip_adapter_config_names_the_key():
    base = {"model": "m", "style_image": "bucket:styles/look.png"}

    def problem(**ip) -> str:
        with pytest.raises(ValueError) as info:
            Img2ImgStyle(**base, ip_adapter={"model": "h94/IP-Adapter"} | ip)
        return str(info.value)

    assert "ip_adapter.scale" in problem(scale={"side": 1.0}) and "unknown block group" in problem(scale={"side": 1})
    assert "scale.up.block_0[1]: 'x' is not a number" in problem(scale={"up": {"block_0": [0.0, "x"]}})
    assert "scale.down.layer_1: a block is named block_<index>" in problem(scale={"down": {"layer_1": 1.0}})
    assert "between 0 and 2" in problem(scale=5)
    assert "ip_adapter.weight_name" in problem(weight_name="ip-adapter_sd15.bin")
    assert "stay inside the model" in problem(subfolder="../elsewhere")
    with pytest.raises(ValueError, match="style_image needs ip_adapter"):
        Img2ImgStyle(**base)
    # ip_adapter alone: each input brings its picture (tests/models/test_ip_adapter_per_input.py).
    assert Img2ImgStyle(model="m", ip_adapter={"model": "h94/IP-Adapter"}).style_image is None
    with pytest.raises(ValueError, match="bucket:<key> names one object"):
        Img2ImgStyle(model="m", style_image="bucket:styles/../secret.png", ip_adapter={"model": "h94/IP-Adapter"})


def test_block_scales_that_do_not_fit_the_unet_name_its_blocks(tiny_sd, tiny_ip_adapter, tmp_path):
    # SDXL's InstantStyle scale on the tiny SD UNet: down.block_2 does not exist here.
    style = styled(tiny_sd, tiny_ip_adapter, ip_adapter=ip_adapter(
        tiny_ip_adapter, scale={"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}))
    settings = make_settings(tmp_path, {"look": style})
    put_look(settings)
    with pytest.raises(ConfigError, match=r"styles\.look\.ip_adapter\.scale does not fit this UNet.*"
                                          r"down: block_1 \(1 layer each\); up: block_0 \(2 layers each\)"):
        build_registry(settings).setup(["look"])


def test_an_ip_adapter_for_another_family_is_a_config_error(tiny_sdxl, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path, {"xl": styled(tiny_sdxl, tiny_ip_adapter, rounds=XL_ROUNDS)})
    put_look(settings)
    with pytest.raises(ConfigError, match=r"is for text width 32; model .* has 64"):
        build_registry(settings).setup(["xl"])


def test_a_file_that_is_not_an_ip_adapter_is_named(tiny_sd, tiny_lora, tiny_ip_adapter, tmp_path):
    not_ip = ip_adapter(tiny_lora, subfolder="", weight_name="pytorch_lora_weights.safetensors",
                        image_encoder={"model": str(tiny_ip_adapter), "subfolder": "models/image_encoder"})
    settings = make_settings(tmp_path, {"look": styled(tiny_sd, tiny_ip_adapter, ip_adapter=not_ip)})
    put_look(settings)
    with pytest.raises(ConfigError, match=r"ip_adapter\.weight_name 'pytorch_lora_weights\.safetensors' is not an "
                                          r"IP-Adapter"):
        build_registry(settings).setup(["look"])


def test_missing_weights_and_offline_hub_adapter_name_the_fix(tiny_ip_adapter, tmp_path):
    loader = ModelLoader()
    with pytest.raises(ModelUnavailableError, match=r"no models/ip-adapter_sd15\.safetensors .*weight_name"):
        resolve_files(loader, IpAdapterSettings(model=str(tiny_ip_adapter)))
    offline = load_settings(None, models={"offline": True, "cache_dir": str(tmp_path / "empty")}).models
    with pytest.raises(ModelUnavailableError, match="processor models pull") as info:
        resolve_files(ModelLoader(offline), IpAdapterSettings(model="h94/IP-Adapter", revision="abc123"))
    assert "h94/IP-Adapter@abc123" in str(info.value)


def test_models_pull_fetches_the_adapter_and_its_encoder_pinned(tmp_path, monkeypatch, capsys):
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"]}))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(index))
    calls = []

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs))
        folder = tmp_path / "snapshots" / repo.replace("/", "--") / "0123abc"
        for rel in ("unet/diffusion_pytorch_model.safetensors", "models/ip-adapter_sd15.safetensors",
                    "models/image_encoder/config.json", "models/image_encoder/model.safetensors"):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).touch()
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    style = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion", "style_image": "bucket:styles/look.png",
             "ip_adapter": {"model": "h94/IP-Adapter", "revision": "feedbee"}}
    make_settings(tmp_path, {"look": style}, models={"cache_dir": str(tmp_path / "cache")})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == 0
    [kwargs] = [k for r, k in calls if r == "h94/IP-Adapter"]
    assert kwargs["revision"] == "feedbee" and kwargs["local_files_only"] is False
    assert kwargs["allow_patterns"] == ["models/ip-adapter_sd15.safetensors", "models/image_encoder/*.safetensors",
                                        "models/image_encoder/*.json"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ip-adapter "))
    assert line.startswith("ip-adapter h94/IP-Adapter@feedbee: ") and line.endswith("(commit 0123abc)")


def test_flow_models_refuse_an_ip_adapter(tmp_path):
    from processor.models.families import FamilyId, FamilyMatch, family
    from processor.pipeline.diffusion import refuse_unsupported

    style = Img2ImgStyle(model="black-forest-labs/FLUX.1-schnell", style_image="look.png",
                         ip_adapter={"model": "h94/IP-Adapter"})
    with pytest.raises(ConfigError, match=r"styles\.f\.ip_adapter: .*flow transformer"):
        refuse_unsupported("f", style, FamilyMatch(family(FamilyId.FLUX_SCHNELL), "FluxPipeline"))


def test_infotext_unit_for_a_plain_scale_follows_the_controlnets():
    record = {"weight_name": "ip-adapter_sd15.safetensors", "hash": "6a3f6166aaaa", "scale": 0.6,
              "style_image_sha256": "ab" * 32}
    assert a1111_unit(record) == ("Module: ip-adapter_clip, Model: ip-adapter_sd15 [6a3f6166], Weight: 0.6, "
                                  "Guidance Start: 0, Guidance End: 1, Style Image Hash: ababababab")
    params = {"prompt": "a toy", "scheduler": "euler-a", "steps": 4, "seed": 1, "model": "m", "engine": "img2img",
              "rounds": [{"strength": 0.6, "guidance": 5.0}], "ip_adapter": record,
              "controlnet_units": [{"type": "canny", "model": "c", "scale": 1.0, "guidance_end": 1.0}]}
    info = parse_infotext(a1111_parameters(infotext_parameters(params), 64, 64))
    assert info["ControlNet 0"].startswith("Module: canny") and info["ControlNet 1"] == a1111_unit(record)
    assert "Ip adapter" not in info


def test_a_pickle_image_encoder_is_refused_never_unpickled(tiny_sd, tiny_ip_adapter, tmp_path):
    """diffusers' own encoder load would take ``pytorch_model.bin``; ours takes safetensors only."""
    import pickle
    import shutil

    from tests.models.test_security_models import _Trap

    folder = tmp_path / "pickle-encoder"
    shutil.copytree(tiny_ip_adapter, folder)
    marker = tmp_path / "UNPICKLED"
    encoder = folder / "models" / "image_encoder"
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    settings = make_settings(tmp_path / "p", {"look": styled(tiny_sd, folder)})
    put_look(settings)
    with pytest.raises(ModelUnavailableError, match=r"image encoder .* needs config\.json and \*\.safetensors"):
        build_registry(settings).setup(["look"])
    assert not marker.exists(), "a pickle was unpickled"

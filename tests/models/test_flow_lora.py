"""LoRAs on the flow families (FLUX.1, SD 3): the same ``lora:`` keys as on SD 1.x, loaded with
diffusers' ``load_lora_weights`` onto the shared transformer, recorded in the manifest and the
infotext's ``Lora hashes``; and ``lora.revision`` pinning a hub LoRA."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from processor.cli.compose import build_registry, make_engine
from processor.cli.main import main
from processor.config import Img2ImgStyle, LoraSettings, ModelSettings, load_settings
from processor.errors import ConfigError, ModelUnavailableError
from processor.manifest import Manifest
from processor.models.loader import ModelLoader
from testkit.images import photo_bytes
from testkit.models.flow import build_flow_lora
from tests.models.test_convert_pickle import hub_cache
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of
from tests.models.test_infotext import a1111_lora_sha, parse_infotext

pytest.importorskip("peft")

ROUNDS = [{"strength": 0.75, "guidance": 3.5}]
PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=6)}


@pytest.fixture(scope="module")
def tiny_flux_lora(tiny_flux, tmp_path_factory):
    return build_flow_lora(tmp_path_factory.mktemp("lora") / "toon-flux", tiny_flux)


def flow_style(model, **extra) -> dict:
    return img2img_style(model, rounds=ROUNDS, steps=4, variants=2, size=64) | extra


def lora_sha(folder) -> str:
    """A1111's ``Lora hashes`` value of the LoRA in ``folder`` (``test_infotext.a1111_lora_sha``)."""
    return a1111_lora_sha((folder / "pytorch_lora_weights.safetensors").read_bytes())


def run_once(settings, tmp_path, monkeypatch) -> Manifest:
    """``PHOTO`` through ``processor run --once`` on ``settings`` (written to tmp_path/config.yaml)."""
    root = settings.store.root
    (root / "inputs").mkdir(parents=True)
    (root / "inputs/toy.jpg").write_bytes(PHOTO["inputs/toy.jpg"])
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--once", "--metrics-port", "0", "--config", str(tmp_path / "config.yaml")]) == 0
    return Manifest.model_validate_json((root / "outputs/toy/manifest.json").read_text())


def assert_lora_recorded(variant, root, lora, scale: float, licence: str) -> dict[str, str]:
    """``variant`` records the LoRA folder ``lora`` (parameters, hashes, licences, the PNG's
    infotext); returns the parsed infotext."""
    p = variant.parameters
    assert p["lora"] == {"path": str(lora), "scale": scale, "revision": None}
    assert p["lora_hashes"] == {lora.name: lora_sha(lora)}
    assert ("lora", str(lora), licence) in [(u.role, u.model, u.license) for u in variant.licenses]
    info = parse_infotext(Image.open(io.BytesIO((root / variant.key).read_bytes())).text["parameters"])
    assert info["Lora hashes"] == f"{lora.name}: {lora_sha(lora)}"
    return info


def test_a_flux_lora_runs_through_processor_run_once_and_is_recorded(tiny_flux, tiny_flux_lora, tmp_path,
                                                                     monkeypatch):
    lora = {"path": str(tiny_flux_lora), "scale": 0.8, "license": "apache-2.0"}
    settings = make_settings(tmp_path, {"flux": flow_style(tiny_flux, lora=lora)})
    manifest = run_once(settings, tmp_path, monkeypatch)
    assert len(manifest.variants) == 2
    for v in manifest.variants:
        assert v.parameters["family"] == "flux" and v.parameters["pipeline"] == "FluxImg2ImgPipeline"
        info = assert_lora_recorded(v, settings.store.root, tiny_flux_lora, 0.8, "apache-2.0")
        assert (info["Sampler"], info["Schedule type"]) == ("Euler", "Simple")  # the flow scheduler, as Forge

    # The LoRA really changed the transformer's output: the same style without it gives other pixels.
    free = make_settings(tmp_path / "free", {"flux": flow_style(tiny_flux)})
    store, layout = drain(free, PHOTO)
    free_variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert [v.sha256 for v in free_variants] != [v.sha256 for v in manifest.variants]
    assert all("lora" not in v.parameters and "lora_hashes" not in v.parameters for v in free_variants)


def test_the_shared_transformer_runs_each_style_with_its_own_adapter_state(tiny_flux, tiny_flux_lora, tmp_path):
    """Two styles on one FLUX.1 base: the LoRA is on for one and off for the other, whatever ran before."""
    alone = make_settings(tmp_path / "alone", {"plain": flow_style(tiny_flux)})
    store, layout = drain(alone, PHOTO)
    plain_alone = [v.sha256 for v in manifest_of(store, layout, "inputs/toy.jpg").variants]

    styles = {"toon": flow_style(tiny_flux, lora={"path": str(tiny_flux_lora)}), "plain": flow_style(tiny_flux)}
    settings = make_settings(tmp_path / "both", styles)
    registry = build_registry(settings)
    store, layout = drain(settings, PHOTO, registry)
    assert registry.engine("toon").pipe.transformer is registry.engine("plain").pipe.transformer
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    plain = [v.sha256 for v in variants if v.style == "plain"]
    toon = [v.sha256 for v in variants if v.style == "toon"]
    assert plain == plain_alone  # the LoRA style ran first on the same transformer, and left nothing on
    assert not set(toon) & set(plain)


def test_an_sd3_lora_runs_through_the_worker(tiny_sd3, tmp_path):
    lora = build_flow_lora(tmp_path / "sd3-lora", tiny_sd3)
    settings = make_settings(tmp_path / "run", {"sd3": flow_style(tiny_sd3, lora={"path": str(lora), "scale": 0.5})})
    store, layout = drain(settings, PHOTO)
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.parameters["family"] == "sd3"
        assert v.parameters["lora"]["scale"] == 0.5 and v.parameters["lora_hashes"] == {"sd3-lora": lora_sha(lora)}


def test_a_lora_for_another_family_is_refused_at_start_instead_of_loading_nothing(tiny_flux, tiny_lora):
    """``tiny_lora`` is an SD 1.x UNet LoRA: diffusers would only warn and load no weights."""
    style = Img2ImgStyle.model_validate(flow_style(tiny_flux, lora={"path": str(tiny_lora)}))
    engine = make_engine("f", style, ModelLoader(ModelSettings()))
    with pytest.raises(ModelUnavailableError, match=r"has no weights for .*FluxImg2ImgPipeline.*another model family"):
        engine.setup()


def test_a_hub_lora_is_fetched_at_its_pinned_revision_and_the_commit_is_recorded(tiny_flux, tiny_flux_lora,
                                                                                 tmp_path):
    cache = tmp_path / "hf-cache"
    commit = "c" * 40
    hub_cache(cache, "toys/flux-toon-lora", tiny_flux_lora, commit)
    (cache / "models--toys--flux-toon-lora" / "refs" / "v1").write_text(commit)  # a tag pointing at it
    models = {"offline": True, "cache_dir": str(cache)}
    lora = {"path": "toys/flux-toon-lora", "revision": "v1"}
    settings = make_settings(tmp_path / "run", {"flux": flow_style(tiny_flux, lora=lora)}, models=models)
    store, layout = drain(settings, PHOTO)
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.parameters["lora"] == {"path": "toys/flux-toon-lora", "scale": 1.0, "revision": commit}
        assert v.parameters["lora_hashes"] == {"flux-toon-lora": lora_sha(tiny_flux_lora)}
    # A revision the cache does not hold is not silently replaced by another: it names the pull.
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=cache))
    with pytest.raises(ModelUnavailableError, match=r"toys/flux-toon-lora.*revision 'v2'.*processor models pull"):
        loader.resolve_lora(LoraSettings(path="toys/flux-toon-lora", revision="v2"))


def test_a_revision_on_a_local_lora_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"lora\.revision 'v1' pins a hub id.*drop revision"):
        LoraSettings(path="/loras/toon.safetensors", revision="v1")
    with pytest.raises(ValueError, match=r"lora\.revision"):
        LoraSettings(path="bucket:models/loras/toon/", revision="v1")
    style = img2img_style(tmp_path, lora={"path": "./toon", "revision": "main"})
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"s": style}, "run": {"styles": ["s"]}}))
    with pytest.raises(ConfigError, match=r"lora\.revision"):
        load_settings(config)

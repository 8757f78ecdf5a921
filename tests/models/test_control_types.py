"""ControlNet map types beside canny (``control.type: lineart | softedge | depth``, each with a
``control.preprocessor``) and SDXL ControlNets: tiny random-weight preprocessors and ControlNets
built offline, loaded through the production path and run through ``processor run --once``."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import ControlSettings, DecodeSettings, Img2ImgStyle, ModelSettings
from processor.errors import ModelUnavailableError
from processor.models.loader import ModelLoader
from processor.pipeline.control_preprocess import HedNetwork, LineartGenerator, load_control_map
from processor.pipeline.decode import decode_image
from processor.pipeline.img2img import Img2ImgEngine
from testkit.images import photo_bytes
from testkit.models.control import build_annotator, build_depth
from testkit.models.sd import build_controlnet
from tests.models.test_diffusion import img2img_style, make_settings, manifest_of
from tests.models.test_sdxl import XL_ROUNDS, run_once

PHOTO = {"inputs/toy.jpg": photo_bytes(160, 120, seed=5)}
#: The working size of PHOTO on the tiny models (long side 64, multiples of 8).
WORKING = (64, 48)


@pytest.fixture(scope="session")
def tiny_lineart(tmp_path_factory) -> Path:
    return build_annotator(tmp_path_factory.mktemp("pre") / "lineart.safetensors", "lineart")


@pytest.fixture(scope="session")
def tiny_hed(tmp_path_factory) -> Path:
    return build_annotator(tmp_path_factory.mktemp("pre") / "hed.safetensors", "softedge", seed=1)


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory) -> Path:
    return build_depth(tmp_path_factory.mktemp("pre") / "tiny-depth")


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet(tiny_sdxl, tmp_path_factory) -> Path:
    """An SDXL ControlNet (``from_unet`` of the tiny SDXL UNet: its ``text_time`` added embedding)."""
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-sdxl-controlnet", tiny_sdxl / "unet")


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet_b(tiny_sdxl, tmp_path_factory) -> Path:
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-sdxl-controlnet-b", tiny_sdxl / "unet", seed=3)


def resized_photo() -> Image.Image:
    photo = decode_image(PHOTO["inputs/toy.jpg"], DecodeSettings(), name="toy.jpg").image
    return photo.resize(WORKING, Image.Resampling.LANCZOS)


def folder_of(layout) -> str:
    return layout.for_input("inputs/toy.jpg").manifest.rsplit("/", 1)[0] + "/"


@pytest.mark.parametrize("kind", ["lineart", "softedge", "depth"])
def test_preprocessed_control_runs_through_the_worker_and_records_the_preprocessor(
        kind, tiny_sd, tiny_controlnet, tiny_lineart, tiny_hed, tiny_depth, tmp_path):
    weights = {"lineart": tiny_lineart, "softedge": tiny_hed, "depth": tiny_depth}[kind]
    control = {"type": kind, "model": str(tiny_controlnet), "license": "openrail", "scale": 0.7,
               "guidance_end": 0.9, "preprocessor": {"model": str(weights), "license": "apache-2.0"}}
    settings = make_settings(tmp_path / kind, {"held": img2img_style(tiny_sd, variants=2, control=control)})
    store, layout = run_once(settings, PHOTO)
    manifest = manifest_of(store, layout, "inputs/toy.jpg")
    folder = folder_of(layout)

    # The map beside the variants is the preprocessor's output for the photo at the working size.
    written = np.asarray(Image.open(io.BytesIO(store.get(folder + f"control-{kind}.png").body)))
    maker = load_control_map(ControlSettings.model_validate(control), ModelLoader(ModelSettings()))
    expected = np.asarray(maker(resized_photo()))
    assert written.shape == (WORKING[1], WORKING[0], 3)
    assert np.array_equal(written, expected)
    assert written.std() > 1.0  # a map with structure, not a blank

    for v in manifest.variants:
        assert v.parameters["pipeline"] == "StableDiffusionControlNetImg2ImgPipeline"
        [c] = v.control
        assert (c.type, c.model, c.scale, c.guidance_end) == (kind, str(tiny_controlnet), 0.7, 0.9)
        assert c.image == folder + f"control-{kind}.png" and c.settings == {}
        assert c.preprocessor is not None
        assert (c.preprocessor.model, c.preprocessor.revision, c.preprocessor.weights) == (
            str(weights), None, "safetensors")
        assert [(u.role, u.model, u.license) for u in v.licenses if u.role == "control"] == [
            ("control", str(tiny_controlnet), "openrail"), ("control", str(weights), "apache-2.0")]
        text = Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"]
        assert (f'ControlNet 0: "Module: {kind}, Model: {tiny_controlnet}, Weight: 0.7, Guidance Start: 0, '
                f'Guidance End: 0.9, Preprocessor: {weights}"') in text


def test_two_styles_share_one_loaded_preprocessor(tiny_sd, tiny_controlnet, tiny_depth, tmp_path):
    control = {"type": "depth", "model": str(tiny_controlnet), "preprocessor": {"model": str(tiny_depth)}}
    styles = {"a": img2img_style(tiny_sd, variants=1, control=control),
              "b": img2img_style(tiny_sd, variants=1, seed=3, control=control | {"scale": 0.5})}
    registry = build_registry(make_settings(tmp_path, styles))
    a, b = registry.engine("a"), registry.engine("b")
    assert a.control.maps[0] is b.control.maps[0]


def test_sdxl_canny_controlnet_through_the_worker(tiny_sdxl, tiny_sdxl_controlnet, tmp_path):
    control = {"type": "canny", "model": str(tiny_sdxl_controlnet), "scale": 0.8, "low": 50, "high": 150}
    styles = {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2, control=control)}
    settings = make_settings(tmp_path / "held", styles)
    store, layout = run_once(settings, PHOTO)
    held = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert len(held) == 2
    for v in held:
        assert v.parameters["pipeline"] == "StableDiffusionXLControlNetImg2ImgPipeline"
        [c] = v.control
        assert (c.type, c.model, c.scale, c.settings) == ("canny", str(tiny_sdxl_controlnet), 0.8,
                                                          {"low": 50, "high": 150})
        assert c.image == folder_of(layout) + "control-canny.png" and c.preprocessor is None
    assert Image.open(io.BytesIO(store.get(held[0].control[0].image).body)).size == WORKING
    # The same SDXL style without control gives other pixels: the ControlNet steered the UNet.
    free = make_settings(tmp_path / "free", {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2)})
    store2, layout2 = run_once(free, PHOTO)
    free_variants = manifest_of(store2, layout2, "inputs/toy.jpg").variants
    assert free_variants[0].parameters["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    assert [v.sha256 for v in free_variants] != [v.sha256 for v in held]


def test_sdxl_multi_controlnet_with_a_depth_map(tiny_sdxl, tiny_sdxl_controlnet, tiny_sdxl_controlnet_b, tiny_depth,
                                                tmp_path):
    controls = [{"type": "canny", "model": str(tiny_sdxl_controlnet), "scale": 1.0},
                {"type": "depth", "model": str(tiny_sdxl_controlnet_b), "scale": 0.5, "guidance_end": 0.5,
                 "preprocessor": {"model": str(tiny_depth)}}]
    settings = make_settings(tmp_path, {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=2,
                                                            control=controls)})
    registry = build_registry(settings)
    assert type(registry.engine("xl").pipe.controlnet).__name__ == "MultiControlNetModel"
    store, layout = run_once(settings, PHOTO)
    folder = folder_of(layout)
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.parameters["pipeline"] == "StableDiffusionXLControlNetImg2ImgPipeline"
        assert [(c.type, c.model, c.scale, c.guidance_end) for c in v.control] == [
            ("canny", str(tiny_sdxl_controlnet), 1.0, 1.0), ("depth", str(tiny_sdxl_controlnet_b), 0.5, 0.5)]
        assert [c.image for c in v.control] == [folder + "control-canny.png", folder + "control-depth.png"]
        assert v.control[1].preprocessor is not None and v.control[1].preprocessor.model == str(tiny_depth)


# --------------------------------------------------------------------------- weights and config


def test_the_architectures_carry_the_published_parameter_names():
    """The names and shapes of the published sk_model.pth and ControlNetHED.pth (controlnet_aux's
    ``Generator(3, 1, 3)`` and ``ControlNetHED_Apache2``), so real weights load with strict=True."""
    lineart = {k: tuple(v.shape) for k, v in LineartGenerator().state_dict().items()}
    assert len(lineart) == 24
    assert lineart["model0.1.weight"] == (64, 3, 7, 7)
    assert lineart["model1.0.weight"] == (128, 64, 3, 3) and lineart["model1.3.weight"] == (256, 128, 3, 3)
    assert [k for k in lineart if k.startswith("model2.")] == [
        f"model2.{i}.conv_block.{j}.{p}" for i in range(3) for j in (1, 5) for p in ("weight", "bias")]
    assert lineart["model3.0.weight"] == (256, 128, 3, 3) and lineart["model3.3.weight"] == (128, 64, 3, 3)
    assert lineart["model4.1.weight"] == (1, 64, 7, 7)
    hed = {k: tuple(v.shape) for k, v in HedNetwork().state_dict().items()}
    assert len(hed) == 37 and hed["norm"] == (1, 3, 1, 1)
    assert hed["block1.convs.0.weight"] == (64, 3, 3, 3) and hed["block3.convs.2.weight"] == (256, 256, 3, 3)
    assert hed["block5.convs.2.weight"] == (512, 512, 3, 3) and hed["block5.projection.weight"] == (1, 512, 1, 1)


def test_control_types_check_their_keys():
    with pytest.raises(ValueError, match=r"type depth needs control.preprocessor.*Depth-Anything"):
        Img2ImgStyle(model="m", control={"type": "depth", "model": "c"})
    with pytest.raises(ValueError, match=r"type canny .* takes no preprocessor; drop control.preprocessor"):
        ControlSettings(model="c", preprocessor={"model": "p"})
    with pytest.raises(ValueError, match="low: canny thresholds do not apply to type lineart"):
        ControlSettings(model="c", type="lineart", low=10, preprocessor={"model": "p"})
    with pytest.raises(ValueError, match="type"):
        ControlSettings(model="c", type="scribble", preprocessor={"model": "p"})
    assert ControlSettings(model="c", type="softedge", preprocessor={"model": "p"}).preprocessor.weight_name is None


def test_weights_of_another_network_are_refused_naming_what_does_not_fit(tiny_sd, tiny_controlnet, tiny_hed):
    style = Img2ImgStyle(model=str(tiny_sd), control={"type": "lineart", "model": str(tiny_controlnet),
                                                      "preprocessor": {"model": str(tiny_hed)}})
    with pytest.raises(ModelUnavailableError, match=r"does not hold the Informative-Drawings lineart generator "
                                                    r"\(sk_model\.pth\): missing model0\.1\.bias.*unexpected block1"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


def test_a_local_pickle_is_never_loaded(tiny_sd, tiny_controlnet, tmp_path):
    (tmp_path / "sk_model.pth").write_bytes(b"not even read")
    style = Img2ImgStyle(model=str(tiny_sd), control={"type": "lineart", "model": str(tiny_controlnet),
                                                      "preprocessor": {"model": str(tmp_path)}})
    with pytest.raises(ModelUnavailableError, match=r"sk_model\.pth is not safetensors and pickles are never loaded"):
        Img2ImgEngine("x", style, ModelLoader(ModelSettings())).setup()


# --------------------------------------------------------------------------- pull: pickle conversion

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "example-org/annotators"


def hub_cache_with(cache: Path, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache holding ``REPO`` at ``COMMIT`` (refs/main) with ``files``, as a pull leaves it."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, body in files.items():
        (snapshot / name).write_bytes(body)
    return snapshot


def cached_only(monkeypatch):
    """The pull's hub downloads answered from the cache (the tests have no network)."""
    import huggingface_hub

    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda *a, **k: real(*a, **(k | {"local_files_only": True})))


def test_models_pull_converts_the_published_pickle_and_the_offline_worker_loads_it(
        tiny_sd, tiny_controlnet, tmp_path, monkeypatch, capsys):
    import torch

    torch.manual_seed(5)
    state = LineartGenerator().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    cache = tmp_path / "cache"
    hub_cache_with(cache, {"sk_model.pth": buffer.getvalue()})
    control = {"type": "lineart", "model": str(tiny_controlnet), "preprocessor": {"model": REPO}}
    styles = {"held": img2img_style(tiny_sd, variants=1, control=control)}
    offline = make_settings(tmp_path / "w", styles, models={"cache_dir": str(cache), "offline": True})

    # Before the pull: the worker stops at start naming the command, and never reads the pickle.
    with pytest.raises(ModelUnavailableError, match=r"sk_model\.pth is a pickle.*processor models pull"):
        Img2ImgEngine("held", offline.styles["held"], ModelLoader(offline.models)).setup()

    cached_only(monkeypatch)
    make_settings(tmp_path / "p", styles, models={"cache_dir": str(cache)})
    assert main(["models", "pull", "--config", str(tmp_path / "p" / "config.yaml")]) == 0
    converted = cache / "processor-converted" / REPO.replace("/", "--") / COMMIT / "sk_model.safetensors"
    assert f"lineart preprocessor {REPO}: {converted} (converted from pickle)" in capsys.readouterr().out
    from safetensors.torch import load_file

    loaded = load_file(str(converted))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    record = json.loads(converted.with_name("sk_model.safetensors.json").read_text())
    assert record["commit"] == COMMIT and record["source"] == "sk_model.pth" and record["tensors"] == len(state)

    store, layout = run_once(offline, PHOTO)
    [v] = manifest_of(store, layout, "inputs/toy.jpg").variants
    [c] = v.control
    assert c.preprocessor is not None
    assert (c.preprocessor.model, c.preprocessor.revision, c.preprocessor.weights) == (
        REPO, COMMIT, "converted-from-pickle")


class _Trap:
    def __reduce__(self):
        return (os.system, ("echo never",))


def test_models_pull_refuses_a_pickle_that_holds_code(tiny_sd, tiny_controlnet, tmp_path, monkeypatch, capsys):
    from processor.errors import EXIT_MODEL

    cache = tmp_path / "cache"
    hub_cache_with(cache, {"ControlNetHED.pth": pickle.dumps({"norm": _Trap()}, protocol=2)})
    cached_only(monkeypatch)
    control = {"type": "softedge", "model": str(tiny_controlnet), "preprocessor": {"model": REPO}}
    make_settings(tmp_path, {"held": img2img_style(tiny_sd, control=control)}, models={"cache_dir": str(cache)})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == EXIT_MODEL
    error = capsys.readouterr().err
    assert "refused to convert" in error and "ControlNetHED.pth" in error and "Nothing from it was run" in error
    assert not list(cache.rglob("*.safetensors"))  # nothing half-converted is left for the worker


def test_shipped_held_style_runs_depth_and_lineart_and_is_counted():
    """``modern-disney-held`` from the shipped config.yaml, on tiny models of its families
    (``bench.unet_evals``): both ControlNets and both preprocessors run."""
    from bench import unet_evals

    rows = unet_evals.main(["--styles", "modern-disney-held", "--reference", "modern-disney-held"])
    held = rows["modern-disney-held"]
    # 4 variants x int(30 * 0.75) = 22 guided steps in one batched call each; two ControlNets per step.
    assert (held["variants"], held["unet_calls"], held["unet_evaluations"]) == (4, 22, 176)
    assert held["controlnet_evaluations"] == 2 * 176


def test_sdxl_controlnet_with_a_refiner_steers_the_base_rounds_only(tiny_sdxl, tiny_sdxl_refiner, tiny_sdxl_controlnet,
                                                                   tmp_path):
    control = {"type": "canny", "model": str(tiny_sdxl_controlnet)}
    refiner = {"model": str(tiny_sdxl_refiner), "strength": 0.5, "steps": 4, "guidance": 3.0}
    settings = make_settings(tmp_path, {"xl": img2img_style(tiny_sdxl, rounds=XL_ROUNDS, variants=1, control=control,
                                                            refiner=refiner)})
    store, layout = run_once(settings, PHOTO)
    [v] = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert v.parameters["pipeline"] == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert v.parameters["rounds"][-1]["refiner"] is True
    assert v.parameters["rounds"][-1]["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    assert [c.model for c in v.control] == [str(tiny_sdxl_controlnet)]


def test_an_offline_worker_loads_a_hub_depth_model_from_the_cache(tiny_sd, tiny_controlnet, tiny_depth, tmp_path):
    """A hub id resolves to its cached snapshot (no network: offline), and the commit is recorded."""
    cache = tmp_path / "cache"
    hub_cache_with(cache, {p.name: p.read_bytes() for p in tiny_depth.iterdir()})
    control = {"type": "depth", "model": str(tiny_controlnet), "preprocessor": {"model": REPO}}
    settings = make_settings(tmp_path, {"held": img2img_style(tiny_sd, variants=1, control=control)},
                             models={"cache_dir": str(cache), "offline": True})
    store, layout = run_once(settings, PHOTO)
    [v] = manifest_of(store, layout, "inputs/toy.jpg").variants
    [c] = v.control
    assert c.preprocessor is not None
    assert (c.preprocessor.model, c.preprocessor.revision, c.preprocessor.weights) == (REPO, COMMIT, "safetensors")
    missing = ControlSettings.model_validate(control | {"preprocessor": {"model": "example-org/not-cached"}})
    with pytest.raises(ModelUnavailableError, match=r"not-cached.*processor models pull"):
        load_control_map(missing, ModelLoader(settings.models))

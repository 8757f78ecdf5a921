"""Backgrounds behind the toy: inpaint, generate and instruct with tiny random-weight pipelines
(a 9-channel inpainting UNet, text-to-image, instruct-pix2pix) loaded through ``processor.models.loader``,
directly and end to end through ``processor run --once`` over a local store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import Img2ImgStyle, MaskSettings, ModelSettings, ToonStyle, load_settings
from processor.errors import ConfigError
from processor.manifest import Manifest
from processor.models.loader import ModelLoader
from processor.models.pull_list import configured_models
from processor.pipeline.background import BackgroundEngine, composite, with_background
from processor.pipeline.mask import SubjectMasker
from processor.pipeline.toon import ToonEngine
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import encode
from testkit.scenes import _desk, scene

#: Odd sizes on purpose (not multiples of 8): the result must come back at exactly this size.
ODD_SIZES = {"4:3": (100, 75), "3:4": (75, 100), "16:9": (112, 63)}
#: A toy large enough to have a core well inside the feather band at these sizes.
TOY = {"centre": (0.4, 0.6), "scale": 0.7}
#: The weight-free segmenter: these tests are about the background stage (the default model's own
#: tests are tests/models/test_real_mask.py).
GRABCUT = MaskSettings(onnx=None)


def background(mode: str, **extra) -> dict:
    return {"mode": mode, "prompt": "a sunny beach with palm trees", "steps": 3} | extra


def core(mask_png: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels fully subject at ``size``: outside the feather band."""
    alpha = (
        mask_png if isinstance(mask_png, np.ndarray) else np.asarray(mask_png.resize(size, Image.Resampling.BILINEAR))
    )
    return alpha == 255


def toon_stage(mode: str, loader: ModelLoader, masker: SubjectMasker, **bg) -> tuple[ToonEngine, BackgroundEngine]:
    style = ToonStyle(variants=2, seed=3, background=background(mode, **bg))
    inner = ToonEngine("t", style)
    engine = with_background(ToonEngine("t", style), "t", style, loader, masker)
    engine.setup()
    return inner, engine


@pytest.fixture(scope="module")
def loader() -> ModelLoader:
    return ModelLoader(ModelSettings())


#: Every aspect ratio in generate mode; the other modes share the resize path (and run end to end
#: below at 4:3 and 16:9), so one aspect each keeps CI fast.
MODE_ASPECTS = [("generate", "4:3"), ("generate", "3:4"), ("generate", "16:9"), ("instruct", "3:4"),
                ("inpaint", "16:9")]


@pytest.mark.parametrize("mode,aspect", MODE_ASPECTS)
def test_size_kept_and_subject_pixels_exact(mode, aspect, loader, tiny_sd, tiny_pix2pix, tiny_inpaint):
    model = {"generate": tiny_sd, "instruct": tiny_pix2pix, "inpaint": tiny_inpaint}[mode]
    masker = SubjectMasker(GRABCUT)
    inner, engine = toon_stage(mode, loader, masker, model=str(model))
    photo = scene(*ODD_SIZES[aspect], seed=1, **TOY).image
    transformed = inner(photo)
    out = engine(photo)
    mask = masker(photo)
    assert mask.fallback is None
    for before, after in zip(transformed, out, strict=False):
        assert after.image.size == before.image.size == photo.size
        inside = core(mask.alpha_at(after.image.size), after.image.size)
        assert inside.mean() > 0.05
        a, b = np.asarray(after.image), np.asarray(before.image)
        assert (a[inside] == b[inside]).all()
        outside = mask.alpha_at(after.image.size) == 0
        assert (a[outside] != b[outside]).any(), "the background was not changed"
        assert after.background["mode"] == mode and after.background["applied"] is True
        assert after.background["model"] == str(model)
        assert after.background["seed"] == after.seed  # default: the variant's own seed
        assert after.mask is mask


def test_composite_is_exact_at_full_and_zero_alpha():
    fg = Image.new("RGB", (4, 1), (10, 200, 30))
    bg = Image.new("RGB", (4, 1), (250, 0, 90))
    alpha = np.array([[255, 0, 128, 1]], np.uint8)
    out = np.asarray(composite(fg, bg, alpha))
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[0, 1]) == (250, 0, 90)
    assert tuple(out[0, 2]) == (130, 100, 60)


def test_empty_desk_falls_back_to_the_transform_with_the_reason(loader, tiny_sd):
    inner, engine = toon_stage("generate", loader, SubjectMasker(GRABCUT), model=str(tiny_sd))
    desk = Image.fromarray(_desk(96, 72, np.random.default_rng(4), 0.45).astype(np.uint8))
    out = engine(desk)
    for before, after in zip(inner(desk), out, strict=False):
        assert np.array_equal(np.asarray(before.image), np.asarray(after.image))
        assert after.background["applied"] is False and after.background["seed"] is None
        assert "min_coverage" in after.background["fallback"]


def test_generate_on_the_styles_model_shares_its_weights(tiny_sd, tmp_path):
    settings = _settings(
        tmp_path, {"plain": _img2img(tiny_sd), "gen": _img2img(tiny_sd, background=background("generate"))}
    )
    registry = build_registry(settings)
    plain, gen = registry.engine("plain"), registry.engine("gen")
    assert isinstance(gen, BackgroundEngine) and not isinstance(plain, BackgroundEngine)
    assert gen.stage.pipe.unet is plain.pipe.unet and gen.stage.pipe.vae is plain.pipe.vae
    assert gen.stage.harmonizer.unet is plain.pipe.unet
    assert type(gen.stage.pipe).__name__ == "StableDiffusionPipeline"
    assert gen.describe()["background"]["mode"] == "generate"


def test_sidecar_background_merges_into_the_styles(tiny_sd, tiny_inpaint, tmp_path):
    bg = background("inpaint", model=str(tiny_inpaint), seed=11)
    settings = _settings(tmp_path, {"paint": _img2img(tiny_sd, background=bg)})
    registry = build_registry(settings)
    other = registry.engine("paint", {"background": {"prompt": "a snowy mountain"}})
    assert other.stage.settings.prompt == "a snowy mountain"
    assert other.stage.model == str(tiny_inpaint) and other.stage.settings.seed == 11
    assert not isinstance(registry.engine("paint", {"background": {"mode": "none"}}), BackgroundEngine)


def test_config_refuses_incomplete_backgrounds(tmp_path, tiny_sd):
    with pytest.raises(ConfigError, match=r"background\.model is required for mode 'inpaint'"):
        _settings(tmp_path / "a", {"s": _img2img(tiny_sd, background={"mode": "inpaint", "prompt": "x"})})
    with pytest.raises(ConfigError, match=r"background\.prompt is required"):
        _settings(tmp_path / "b", {"s": _img2img(tiny_sd, background={"mode": "generate"})})
    with pytest.raises(ConfigError, match="toon style"):
        _settings(tmp_path / "c", {"s": {"engine": "toon", "background": {"mode": "generate", "prompt": "x"}}})


def test_inpaint_with_a_text_to_image_model_is_a_config_error(loader, tiny_sd):
    style = Img2ImgStyle(model=str(tiny_sd), background=background("inpaint", model=str(tiny_sd)))
    engine = with_background(ToonEngine("t", ToonStyle()), "t", style, loader, SubjectMasker(GRABCUT))
    with pytest.raises(ConfigError, match="not an inpainting model"):
        engine.setup()


def test_models_pull_lists_background_models(tiny_sd, tiny_inpaint):
    styles = {"a": Img2ImgStyle(model=str(tiny_sd), background=background("inpaint", model=str(tiny_inpaint))),
              "b": ToonStyle(background=background("instruct"))}
    assert configured_models(styles) == [(str(tiny_sd), None), (str(tiny_inpaint), None),
                                         ("timbrooks/instruct-pix2pix", None)]


def test_segmenter_model_replaces_grabcut(loader, tiny_segformer):
    masker = SubjectMasker(MaskSettings(segmenter=str(tiny_segformer)), loader)
    photo = scene(96, 72, 2, **TOY).image
    mask = masker(photo)
    assert mask.method == f"model:{tiny_segformer}"
    assert mask.alpha.shape == (72, 96) and 0.0 <= mask.coverage <= 1.0
    # Random weights: whatever it found is judged by the same coverage bounds.
    assert (mask.fallback is None) == (0.02 <= mask.coverage <= 0.9)


# --------------------------------------------------------------------------- through the worker


def _img2img(model: Path, **extra) -> dict:
    return {"engine": "img2img", "model": str(model), "trigger": "cartoon, Pixar", "rounds": [{"strength": 0.5}],
            "steps": 4, "variants": 2, "seed": 7} | extra


def _pix2pix(model: Path, **extra) -> dict:
    return {"engine": "instruct-pix2pix", "model": str(model), "instruction": "make it a cartoon", "steps": 3,
            "variants": 2, "seed": 5} | extra


def _settings(tmp_path: Path, styles: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")},
           "run": {"styles": list(styles), "poll_interval_s": 0.05}, "styles": styles,
           "pipeline": {"contact_sheet_height": 32, "mask": {"onnx": None}}}
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))
    return load_settings(tmp_path / "config.yaml")


def _png(store: LocalStore, key: str) -> Image.Image:
    return Image.open(io.BytesIO(store.get(key).body))


def test_every_mode_through_processor_run_once(tiny_sd, tiny_inpaint, tiny_pix2pix, tmp_path, monkeypatch):
    """The issue's "done when": mask and variants written, subject kept in place, all in the manifest.

    ``generate`` runs on an img2img style's own model (shared weights) and is compared with the same
    style without a background; ``inpaint`` and ``instruct`` run behind the (cheap) toon transform
    and are compared with the plain toon style. Same seeds, so the subjects must match exactly.
    """
    toon = {"engine": "toon", "variants": 2, "seed": 3, "max_side": 128}
    styles = {
        "plain": _img2img(tiny_sd),
        "generate": _img2img(tiny_sd, background=background("generate", harmonize=0.5)),
        "toon": toon,
        "inpaint": toon | {"background": background("inpaint", model=str(tiny_inpaint), seed=100)},
        "instruct": toon | {"background": background("instruct", model=str(tiny_pix2pix),
                                                      prompt="put a waterfall behind it")},
    }
    models = {"generate": tiny_sd, "inpaint": tiny_inpaint, "instruct": tiny_pix2pix}
    references = {"generate": "plain", "inpaint": "toon", "instruct": "toon"}
    settings = _settings(tmp_path, styles)
    store = LocalStore(settings.store.root)
    inputs = {"inputs/wide.png": scene(128, 96, seed=0, **TOY).image,       # 4:3
              "inputs/cinema.png": scene(128, 72, seed=1, **TOY).image}     # 16:9, with a sidecar
    for key, image in inputs.items():
        store.put(key, encode(image, "PNG"))
    store.put("inputs/cinema.json", json.dumps({"background": {"prompt": "a snowy mountain"}}).encode())
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0

    layout = KeyLayout(settings.prefixes)
    for key, photo in inputs.items():
        keys = layout.for_input(key)
        manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
        mask = _png(store, keys.mask)
        assert mask.mode == "L" and mask.size == photo.size
        by = {(v.style, v.index): v for v in manifest.variants}
        assert len(by) == 10
        prompt = "a snowy mountain" if key == "inputs/cinema.png" else None
        for style, reference in references.items():
            for i in range(2):
                v, ref = by[(style, i)], by[(reference, i)]
                bg = v.background
                assert bg is not None and bg.mode == style and bg.applied and bg.fallback is None
                assert bg.mask == keys.mask and 0.02 < bg.coverage < 0.9 and bg.segmenter == "grabcut"
                assert bg.prompt == (prompt or styles[style]["background"]["prompt"])
                assert bg.seed == (100 + i if style == "inpaint" else v.seed)
                assert bg.model == str(models[style])
                # The transform's size, and its subject pixels untouched where the mask is solid.
                assert (v.width, v.height) == (ref.width, ref.height)
                a, b = np.asarray(_png(store, v.key)), np.asarray(_png(store, ref.key))
                inside = core(mask, (v.width, v.height))
                assert inside.any() and (a[inside] == b[inside]).all()
                assert (a[~inside] != b[~inside]).any()
        assert all(by[(name, i)].background is None for name in ("plain", "toon") for i in range(2))
        assert by[("toon", 0)].width == photo.width  # toon keeps the photo's size: 4:3 and 16:9 kept


def test_shipped_config_has_a_documented_background_style():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml")
    assert settings.run.styles == ["toon"]  # the offline quickstart never loads it
    beach = settings.styles["beach"].background
    assert beach.mode == "generate" and beach.prompt and beach.model is None
    assert configured_models({"beach": settings.styles["beach"]}) == [("nitrosocke/mo-di-diffusion", None)]


def test_sidecar_background_is_validated():
    from processor.errors import InvalidSidecar
    from processor.pipeline.sidecar import parse_sidecar

    car = parse_sidecar(b'{"background": {"mode": "inpaint", "prompt": "a forest"}}', "inputs/a.json")
    assert car.style_overrides() == {"background": {"mode": "inpaint", "prompt": "a forest"}}
    with pytest.raises(InvalidSidecar, match=r"background\.model"):
        parse_sidecar(b'{"background": {"model": "x/y"}}', "inputs/a.json")


def test_offline_segmenter_missing_from_the_cache_names_the_fix(tmp_path):
    from processor.errors import ModelUnavailableError

    loader = ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "empty-cache"))
    masker = SubjectMasker(MaskSettings(segmenter="someone/segformer-toys"), loader)
    with pytest.raises(ModelUnavailableError, match="processor models pull"):
        masker.setup()


@pytest.mark.parametrize("favoured,coverage", [("toy", 1.0), ("table", 0.0)])
def test_segmenter_labels_decide_subject_and_background(loader, tiny_segformer, tmp_path, favoured, coverage):
    """A segmenter whose head always answers one label: an object label is all subject, a scene
    label is all background (both then fall back on coverage)."""
    import torch
    from transformers import SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation.from_pretrained(tiny_segformer)
    with torch.no_grad():
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.copy_(torch.tensor([5.0 if model.config.id2label[i] == favoured else 0.0
                                                              for i in range(3)]))
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "preprocessor_config.json").write_text((tiny_segformer / "preprocessor_config.json").read_text())
    mask = SubjectMasker(MaskSettings(segmenter=str(tmp_path)), loader)(scene(96, 72, 2, **TOY).image)
    assert mask.coverage == coverage and mask.fallback is not None


class _BatchSpy:
    """Wraps a pipeline: records each call's batch size; raises CUDA OOM above ``oom_above``."""

    def __init__(self, pipe, oom_above: int | None = None) -> None:
        self.pipe, self.oom_above, self.batches = pipe, oom_above, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        import torch

        batch = len(kwargs["generator"])
        if self.oom_above is not None and batch > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(batch)
        return self.pipe(**kwargs)


@pytest.mark.parametrize("oom_above,expected", [(None, [3]), (1, [1, 1, 1])])
def test_variants_go_through_one_call_and_halve_on_cuda_oom(loader, tiny_sd, oom_above, expected):
    inner, engine = toon_stage("generate", loader, SubjectMasker(GRABCUT), model=str(tiny_sd), harmonize=0.5)
    inner.style = engine.inner.style = inner.style.model_copy(update={"variants": 3})
    engine.stage.pipe = _BatchSpy(engine.stage.pipe, oom_above)
    engine.stage.harmonizer = _BatchSpy(engine.stage.harmonizer)
    photo = scene(96, 72, 1, **TOY).image
    out = engine(photo)
    assert engine.stage.pipe.batches == expected
    assert engine.stage.harmonizer.batches == ([3] if oom_above is None else [1, 1, 1])
    assert [v.background["seed"] for v in out] == [3, 4, 5] and all(v.background["applied"] for v in out)


def test_cuda_oom_with_one_background_is_a_stage_failure(loader, tiny_sd):
    from processor.errors import StageFailed

    _, engine = toon_stage("generate", loader, SubjectMasker(GRABCUT), model=str(tiny_sd))
    engine.stage.pipe = _BatchSpy(engine.stage.pipe, oom_above=0)
    with pytest.raises(StageFailed, match=r"background\.size"):
        engine(scene(96, 72, 1, **TOY).image)

"""Qwen-Image-Edit under ``engine: edit`` (``processor.pipeline.edit``): tiny random-weight
pipelines built offline (``testkit.models.qwen``), picked by ``model_index.json``, loaded through the
production loader and run through ``processor run --once`` and the worker."""

from __future__ import annotations

import pytest

from processor.cli.compose import make_engine
from processor.cli.main import main
from processor.config import EditStyle, ModelSettings
from processor.manifest import Manifest
from processor.models.families import Editor
from processor.models.loader import ModelLoader
from processor.pipeline.edit import EditEngine, condition_size
from testkit.images import photo_bytes, photo_image
from tests.models.test_diffusion import drain, make_settings, manifest_of

PHOTO = photo_bytes(160, 120, seed=6)
INSTRUCTION = "Put a waterfall in the background"


def edit_style(model, **extra) -> dict:
    return {"engine": "edit", "model": str(model), "instruction": INSTRUCTION, "steps": 2, "variants": 2,
            "seed": 3, "size": 64} | extra


def test_a_qwen_edit_runs_through_processor_run_once_with_true_cfg_and_records_the_editor(
        tiny_qwen_edit, tmp_path, monkeypatch):
    settings = make_settings(tmp_path, {"qwen": edit_style(tiny_qwen_edit)})
    root = settings.store.root
    (root / "inputs").mkdir(parents=True)
    (root / "inputs/toy.jpg").write_bytes(PHOTO)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0
    manifest = Manifest.model_validate_json((root / "outputs/toy/manifest.json").read_text())
    assert len(manifest.variants) == 2 and len({v.sha256 for v in manifest.variants}) == 2
    for i, v in enumerate(manifest.variants):
        p = v.parameters
        assert (v.width, v.height) == (64, 48)  # the photo's 4:3, sides of 16
        assert p["engine"] == "edit" and p["editor"] == "qwen-image-edit"
        assert p["pipeline"] == "QwenImageEditPipeline" and p["scheduler"] == "FlowMatchEulerDiscreteScheduler"
        assert p["instruction"] == INSTRUCTION and p["seed"] == 3 + i
        # The card's defaults: true CFG 4.0 against a blank negative, two transformer calls a step.
        assert p["true_cfg_scale"] == p["guidance"] == 4.0 and p["true_cfg"] is True and p["negative"] == " "
        assert p["denoising_steps"] == 2 and p["transformer_evals"] == 4
        assert p["condition_size"] == "1184x896" and p["weights"] == "safetensors"


def test_the_plus_editor_without_cfg_uses_one_call_a_step_and_is_reproducible(tiny_qwen_edit_plus, tmp_path):
    runs = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, {"qwen": edit_style(tiny_qwen_edit_plus, guidance=1.0,
                                                                       negative="blurry")})
        store, layout = drain(settings, {"inputs/toy.jpg": PHOTO})
        runs.append(manifest_of(store, layout, "inputs/toy.jpg"))
    assert [v.sha256 for v in runs[0].variants] == [v.sha256 for v in runs[1].variants]
    for v in runs[0].variants:
        p = v.parameters
        assert p["editor"] == "qwen-image-edit-plus" and p["pipeline"] == "QwenImageEditPlusPipeline"
        assert p["true_cfg"] is False and p["negative"] is None and p["transformer_evals"] == 2


def test_a_negative_steers_the_edit_and_a_variant_does_not_depend_on_its_batch(tiny_qwen_edit):
    loader = ModelLoader(ModelSettings())
    photo = photo_image(96, 72)

    def render(**extra):
        engine = make_engine("q", EditStyle.model_validate(edit_style(tiny_qwen_edit, **extra)), loader)
        engine.setup()
        return engine, engine(photo)

    _, blank = render()
    _, red = render(negative="red")
    assert red[0].parameters["negative"] == "red"
    assert red[0].image.tobytes() != blank[0].image.tobytes()
    _, single = render(variants=1, seed=4)
    assert single[0].parameters["seed"] == blank[1].parameters["seed"] == 4
    diff = max(abs(a - b) for a, b in zip(single[0].image.tobytes(), blank[1].image.tobytes(), strict=True))
    assert diff <= 2  # seed 4 alone and seed 4 second in a batch of two: the same picture


def test_the_editor_comes_from_model_index(tiny_qwen_edit, tiny_qwen_edit_plus, tiny_kontext):
    loader = ModelLoader(ModelSettings())
    kontext = tiny_kontext
    for model, editor in ((tiny_qwen_edit, Editor.QWEN_IMAGE_EDIT), (tiny_qwen_edit_plus, Editor.QWEN_IMAGE_EDIT_PLUS),
                          (kontext, Editor.FLUX_KONTEXT)):
        engine = make_engine("e", EditStyle(model=str(model), instruction="make it red"), loader)
        assert type(engine) is EditEngine and loader.family(str(model)).family.editor is editor
    # Kontext keeps its own defaults under the same keys and has no negative prompt.
    engine = make_engine("k", EditStyle.model_validate(edit_style(kontext, variants=1, negative="blurry")), loader)
    engine.setup()
    [variant] = engine(photo_image(64, 64))
    p = variant.parameters
    assert p["editor"] == "flux-kontext" and p["guidance"] == 2.5 and p["negative_used"] is False


@pytest.mark.parametrize("key, value, message", [
    ("guidance", -1, r"styles\.q\.guidance"),
    ("negative", "x" * 5000, r"styles\.q\.negative"),
    ("size", 100, r"styles\.q\.size.*multiple of 16"),
])
def test_a_bad_edit_key_is_refused_naming_it(tmp_path, key, value, message):
    from processor.config import load_settings
    from processor.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_settings(None, store={"kind": "local", "root": str(tmp_path)}, run={"styles": ["q"]},
                      styles={"q": edit_style("some/editor") | {key: value}})


def test_the_condition_size_is_the_pipelines_one_megapixel_copy():
    assert condition_size(1600, 1200) == (1184, 896)
    assert condition_size(1000, 1000) == (1024, 1024)


def test_float16_is_refused_before_loading_with_the_dtype_to_set(tiny_qwen_edit):
    from processor.errors import ConfigError

    engine = make_engine("q", EditStyle.model_validate(edit_style(tiny_qwen_edit)),
                         ModelLoader(ModelSettings(dtype="float16")))
    with pytest.raises(ConfigError, match=r"styles\.q\.model: .* float16 .* set models\.dtype: bfloat16"):
        engine.setup()
    assert engine.pipe is None

"""LoRAs on the instruction editors (``engine: edit``): FLUX.1 Kontext and Qwen-Image-Edit take the
img2img styles' ``lora:`` keys, loaded onto the shared transformer, switched on for their style only,
recorded in the manifest and the infotext's ``Lora hashes``, and checked against the model family."""

from __future__ import annotations

import pytest

from processor.cli.compose import build_registry
from processor.errors import ModelUnavailableError
from testkit.models.flow import build_flow_lora
from tests.models.test_diffusion import drain, make_settings, manifest_of
from tests.models.test_flow_lora import PHOTO as TOY_PHOTO
from tests.models.test_flow_lora import assert_lora_recorded, lora_sha, run_once

pytest.importorskip("peft")

PHOTO = TOY_PHOTO["inputs/toy.jpg"]
INSTRUCTION = "Make it a cartoon toy"


@pytest.fixture(scope="module")
def kontext_lora(tiny_kontext, tmp_path_factory):
    return build_flow_lora(tmp_path_factory.mktemp("lora") / "toon-kontext", tiny_kontext)


def edit_style(model, **extra) -> dict:
    return {"engine": "edit", "model": str(model), "instruction": INSTRUCTION, "guidance": 2.5, "steps": 2,
            "variants": 2, "seed": 3, "size": 64} | extra


def test_a_kontext_lora_runs_through_processor_run_once_and_is_recorded(tiny_kontext, kontext_lora, tmp_path,
                                                                       monkeypatch):
    lora = {"path": str(kontext_lora), "scale": 0.7, "license": "apache-2.0"}
    settings = make_settings(tmp_path, {"kontext": edit_style(tiny_kontext, lora=lora)})
    manifest = run_once(settings, tmp_path, monkeypatch)
    assert len(manifest.variants) == 2
    for v in manifest.variants:
        assert v.parameters["pipeline"] == "FluxKontextPipeline" and v.parameters["editor"] == "flux-kontext"
        assert_lora_recorded(v, settings.store.root, kontext_lora, 0.7, "apache-2.0")

    # The LoRA changed the transformer's output, and a style without it records none.
    free = make_settings(tmp_path / "free", {"kontext": edit_style(tiny_kontext)})
    store, layout = drain(free, {"inputs/toy.jpg": PHOTO})
    free_variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert not {v.sha256 for v in free_variants} & {v.sha256 for v in manifest.variants}
    assert all("lora" not in v.parameters and "lora_hashes" not in v.parameters for v in free_variants)


def test_two_kontext_styles_share_the_transformer_and_only_one_runs_the_lora(tiny_kontext, kontext_lora, tmp_path):
    alone = make_settings(tmp_path / "alone", {"plain": edit_style(tiny_kontext)})
    store, layout = drain(alone, {"inputs/toy.jpg": PHOTO})
    plain_alone = [v.sha256 for v in manifest_of(store, layout, "inputs/toy.jpg").variants]

    styles = {"toon": edit_style(tiny_kontext, lora={"path": str(kontext_lora)}), "plain": edit_style(tiny_kontext)}
    settings = make_settings(tmp_path / "both", styles)
    registry = build_registry(settings)
    store, layout = drain(settings, {"inputs/toy.jpg": PHOTO}, registry)
    assert registry.engine("toon").pipe.transformer is registry.engine("plain").pipe.transformer
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert [v.sha256 for v in variants if v.style == "plain"] == plain_alone  # the LoRA left nothing on
    assert not {v.sha256 for v in variants if v.style == "toon"} & set(plain_alone)


def test_a_lora_of_another_family_on_kontext_is_refused_at_start(tiny_kontext, tiny_lora, tmp_path):
    """``tiny_lora`` is an SD 1.x UNet LoRA: diffusers would only warn and load no weights."""
    registry = build_registry(make_settings(tmp_path, {"k": edit_style(tiny_kontext, lora={"path": str(tiny_lora)})}))
    with pytest.raises(ModelUnavailableError, match="trained for another model family"):
        registry.setup(["k"])


def test_a_qwen_image_edit_lora_is_loaded_and_recorded(tiny_qwen_edit, tmp_path_factory, tmp_path):
    qwen = tiny_qwen_edit
    lora = build_flow_lora(tmp_path_factory.mktemp("lora") / "toon-qwen", qwen)
    plain = make_settings(tmp_path / "plain", {"q": edit_style(qwen, guidance=4.0)})
    store, layout = drain(plain, {"inputs/toy.jpg": PHOTO})
    plain_sha = {v.sha256 for v in manifest_of(store, layout, "inputs/toy.jpg").variants}

    settings = make_settings(tmp_path / "lora", {"q": edit_style(qwen, guidance=4.0, lora={"path": str(lora)})})
    store, layout = drain(settings, {"inputs/toy.jpg": PHOTO})
    variants = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert len(variants) == 2 and len(plain_sha) == 2
    assert all(v.parameters["editor"] == "qwen-image-edit" for v in variants)
    assert all(v.parameters["lora_hashes"] == {lora.name: lora_sha(lora)} for v in variants)
    assert not {v.sha256 for v in variants} & plain_sha

"""Few-step styles: an LCM-LoRA (``styles.<name>.lcm``) switches the style to the LCM scheduler;
tiny random-weight models and a tiny LoRA, through the production loader and the worker."""

from __future__ import annotations

import pytest
from PIL import Image

from processor.config import Img2ImgStyle, ModelSettings
from processor.models.loader import ModelLoader
from processor.pipeline.img2img import Img2ImgEngine
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of

pytest.importorskip("peft")

FAST_ROUNDS = [{"strength": 0.5, "guidance": 1.0}]


def test_lcm_style_runs_few_steps_with_the_lcm_scheduler_through_the_worker(tiny_sd, tiny_lora, tmp_path):
    style = img2img_style(tiny_sd, rounds=FAST_ROUNDS, steps=8, lcm={"lora": str(tiny_lora)})
    settings = make_settings(tmp_path, {"fast": style})
    assert settings.styles["fast"].scheduler == "lcm"
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=2)})
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        p = v.parameters
        assert p["scheduler"] == "lcm" and p["lcm"] == {"lora": str(tiny_lora), "scale": 1.0, "revision": None}
        assert p["denoising_steps"] == 4 and p["denoising_steps_all_variants"] == 12


def test_the_lcm_lora_is_active_for_its_style_only(tiny_sd, tiny_lora):
    image = Image.new("RGB", (64, 48), (30, 120, 200))
    lcm_scheduler_only = Img2ImgStyle(model=str(tiny_sd), steps=8, variants=1, rounds=FAST_ROUNDS, scheduler="lcm")
    loader = ModelLoader(ModelSettings())
    plain = Img2ImgEngine("plain", lcm_scheduler_only, loader)
    fast = Img2ImgEngine("fast", Img2ImgStyle.model_validate(
        lcm_scheduler_only.model_dump() | {"lcm": {"lora": str(tiny_lora)}}), loader)
    plain.setup()
    reference = plain(image)[0].image.tobytes()
    fast.setup()
    assert fast.pipe.unet is plain.pipe.unet
    assert type(fast.pipe.scheduler).__name__ == "LCMScheduler"
    assert fast(image)[0].image.tobytes() != reference  # the LoRA changed the UNet...
    assert plain(image)[0].image.tobytes() == reference  # ...only while the fast style runs


def test_lcm_refuses_guidance_it_was_not_trained_for():
    with pytest.raises(ValueError, match="too high for lcm"):
        Img2ImgStyle(model="m", lcm={"lora": "x"}, rounds=[{"strength": 0.5, "guidance": 7.5}])


def test_a_hub_lcm_lora_is_fetched_at_its_pinned_revision_and_the_commit_is_recorded(tiny_sd, tiny_lora, tmp_path,
                                                                                     capsys):
    """``lcm.revision`` as ``lora.revision``: pinned, passed to the hub fetch (here a cached tag),
    listed by ``models pull --dry-run``, and the commit recorded in every variant."""
    from processor.cli.main import main
    from processor.errors import ModelUnavailableError
    from processor.worker.runner import Worker
    from tests.models.test_convert_pickle import hub_cache

    cache = tmp_path / "hf-cache"
    commit = "e" * 40
    hub_cache(cache, "toys/lcm-lora", tiny_lora, commit)
    (cache / "models--toys--lcm-lora" / "refs" / "v1").write_text(commit)  # a tag pointing at it
    models = {"offline": True, "cache_dir": str(cache)}
    lcm = {"lora": "toys/lcm-lora", "revision": "v1"}
    settings = make_settings(tmp_path / "run", {"fast": img2img_style(tiny_sd, rounds=FAST_ROUNDS, steps=8, lcm=lcm)},
                             models=models)
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=2)})
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        assert v.parameters["lcm"] == {"lora": "toys/lcm-lora", "scale": 1.0, "revision": commit}
        assert "lcm-lora" in v.parameters["lora_hashes"]
    assert main(["models", "pull", "--dry-run", "--config", str(tmp_path / "run" / "config.yaml")]) == 0
    assert f"lcm lora toys/lcm-lora@v1 [fast]: cached: {cache}" in capsys.readouterr().out
    # A revision the cache does not hold is not silently replaced by another: it names the pull.
    lcm["revision"] = "v2"
    other = make_settings(tmp_path / "v2", {"fast": img2img_style(tiny_sd, rounds=FAST_ROUNDS, steps=8, lcm=lcm)},
                          models=models)
    from processor.cli.compose import build_registry
    from processor.store.local import LocalStore

    worker = Worker(LocalStore(other.store.root), other, build_registry(other), worker_id="w1")
    with pytest.raises(ModelUnavailableError, match=r"toys/lcm-lora.*revision 'v2'.*processor models pull"):
        worker.setup()


def test_a_revision_on_a_local_lcm_lora_is_a_config_error_naming_the_key(tmp_path):
    import json

    from processor.config import LcmSettings, load_settings
    from processor.errors import ConfigError

    with pytest.raises(ValueError, match=r"lcm\.revision 'v1' pins a hub id.*drop revision"):
        LcmSettings(lora="/loras/lcm.safetensors", revision="v1")
    style = img2img_style(tmp_path, rounds=FAST_ROUNDS, lcm={"lora": "./lcm", "revision": "main"})
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"styles": {"s": style}, "run": {"styles": ["s"]}}))
    with pytest.raises(ConfigError, match=r"lcm\.revision"):
        load_settings(config)

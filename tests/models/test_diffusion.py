"""Stable Diffusion styles end to end: tiny random-weight models loaded through ``processor.models.loader``
and run through the worker over a local store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import Img2ImgStyle, ModelSettings, load_settings
from processor.errors import ConfigError, ModelUnavailableError
from processor.manifest import FailureRecord, Manifest
from processor.models.loader import ModelLoader, component_patterns
from processor.pipeline import sampling
from processor.pipeline.img2img import Img2ImgEngine
from processor.pipeline.prompt import build_prompt
from processor.pipeline.sampling import working_size
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes

ROUNDS = [{"strength": 0.7, "guidance": 7.5}, {"strength": 0.5, "guidance": 6.0}, {"strength": 0.4, "guidance": 5.0}]
TRIGGER = "cartoon, Pixar, Disney character, 3D render, modern disney style"


def img2img_style(model: Path, **extra) -> dict:
    return {"engine": "img2img", "model": str(model), "trigger": TRIGGER, "negative": "blurry, ugly",
            "rounds": ROUNDS, "steps": 4, "scheduler": "dpmpp-2m-karras", "variants": 3, "seed": 7} | extra


def make_settings(tmp_path: Path, styles: dict, run_styles: list[str] | None = None, models: dict | None = None):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": run_styles or list(styles), "poll_interval_s": 0.05},
        "styles": styles,
        # GrabCut: these tests are about diffusion; the default segmenter (fetched from the network
        # by `models pull`) has its own tests in tests/models/test_real_mask.py.
        "pipeline": {"contact_sheet_height": 32, "mask": {"onnx": None}},
        "models": models or {},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def drain(settings, inputs: dict[str, bytes], registry=None) -> tuple[LocalStore, KeyLayout]:
    store = LocalStore(settings.store.root)
    for key, data in inputs.items():
        store.put(key, data)
    worker = Worker(store, settings, registry or build_registry(settings), worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0
    return store, KeyLayout(settings.prefixes)


def manifest_of(store, layout, key) -> Manifest:
    return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)


PHOTOS = {"inputs/wide.jpg": photo_bytes(640, 480, seed=3), "inputs/tall.png": photo_bytes(480, 640, fmt="PNG", seed=4)}


def test_rounds_and_variants_through_the_worker_keep_aspect_and_are_reproducible(tiny_sd, tmp_path):
    settings = make_settings(tmp_path / "a", {"disney": img2img_style(tiny_sd)})
    store, layout = drain(settings, PHOTOS)
    digests = {}
    for key, expected in (("inputs/wide.jpg", (64, 48)), ("inputs/tall.png", (48, 64))):
        manifest = manifest_of(store, layout, key)
        assert len(manifest.variants) == 3
        digests[key] = [v.sha256 for v in manifest.variants]
        assert len(set(digests[key])) == 3  # seeds 7, 8, 9 differ
        for i, v in enumerate(manifest.variants):
            assert (v.width, v.height) == expected
            assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256
            p = v.parameters
            assert v.seed == p["seed"] == 7 + i
            assert p["model"] == str(tiny_sd) and p["revision"] is None
            assert p["scheduler"] == "dpmpp-2m-karras" and p["steps"] == 4
            assert p["size"] == f"{expected[0]}x{expected[1]}"
            assert [(r["strength"], r["guidance"]) for r in p["rounds"]] == [(0.7, 7.5), (0.5, 6.0), (0.4, 5.0)]
            assert [r["denoising_steps"] for r in p["rounds"]] == [2, 2, 1]  # int(4 * strength)
            assert p["prompt"] == TRIGGER and p["negative"] == "blurry, ugly"
            assert p["pipeline"] == "StableDiffusionImg2ImgPipeline"
            assert p["batch_size"] == 3 and p["oom_halvings"] == 0

    # Same bytes, same style, same seed: a fresh worker in a fresh bucket writes identical variants.
    again = make_settings(tmp_path / "b", {"disney": img2img_style(tiny_sd)})
    store2, layout2 = drain(again, PHOTOS)
    for key in PHOTOS:
        assert [v.sha256 for v in manifest_of(store2, layout2, key).variants] == digests[key]


class CallSpy:
    """Wraps a pipeline: records each call's batch size; optionally raises CUDA OOM above a batch."""

    def __init__(self, pipe, oom_above: int | None = None) -> None:
        self.pipe = pipe
        self.oom_above = oom_above
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        batch = len(kwargs["generator"])
        assert len(kwargs["prompt"]) == batch == kwargs["image"].shape[0]
        if self.oom_above is not None and batch > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(batch)
        return self.pipe(**kwargs)


def spying_registry(settings, oom_above: int | None = None):
    registry = build_registry(settings)
    spies: list[CallSpy] = []
    factory = registry.factory

    def wrapped(name, style):
        engine = factory(name, style)
        original_setup = engine.setup

        def setup():
            original_setup()
            engine.pipe = CallSpy(engine.pipe, oom_above)
            spies.append(engine.pipe)

        engine.setup = setup
        return engine

    registry.factory = wrapped
    return registry, spies


def test_every_round_runs_as_one_batched_call(tiny_sd, tmp_path):
    rounds = [{"strength": 0.7, "guidance": 20}, {"strength": 0.6, "guidance": 18},
              {"strength": 0.5, "guidance": 16}, {"strength": 0.4, "guidance": 14}]
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, rounds=rounds, variants=4)})
    registry, spies = spying_registry(settings)
    store, layout = drain(settings, {"inputs/cow.jpg": photo_bytes(160, 120)}, registry)
    assert spies[0].batches == [4, 4, 4, 4]  # four rounds (the notebook ran two), all variants at once
    assert len(manifest_of(store, layout, "inputs/cow.jpg").variants[0].parameters["rounds"]) == 4


def test_cuda_oom_halves_the_batch_and_keeps_the_item(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=4)})
    registry, spies = spying_registry(settings, oom_above=1)
    store, layout = drain(settings, {"inputs/cow.jpg": photo_bytes(160, 120)}, registry)
    manifest = manifest_of(store, layout, "inputs/cow.jpg")
    assert len(manifest.variants) == 4
    assert {v.parameters["batch_size"] for v in manifest.variants} == {1}
    assert manifest.variants[0].parameters["oom_halvings"] == 2  # 4 -> 2 -> 1
    assert spies[0].batches == [1] * 12  # 3 rounds x 4 variants, one at a time


def test_cuda_oom_with_one_variant_is_a_failure_record(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=1)})
    registry, _ = spying_registry(settings, oom_above=0)
    store, layout = drain(settings, {"inputs/cow.jpg": photo_bytes(160, 120)}, registry)
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/cow.jpg").failure).body)
    assert record.error == "StageFailed" and "out of memory" in record.message
    assert not record.permanent


def test_sidecar_overrides_prompt_negative_seed_and_variants(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd)})
    sidecar = {"prompt": "a red toy robot", "negative": "dark", "seed": 100, "variants": 2}
    inputs = {"inputs/robot.jpg": photo_bytes(160, 120), "inputs/robot.json": json.dumps(sidecar).encode(),
              "inputs/plain.jpg": photo_bytes(160, 120)}
    store, layout = drain(settings, inputs)
    robot = manifest_of(store, layout, "inputs/robot.jpg").variants
    assert len(robot) == 2
    assert [v.seed for v in robot] == [100, 101]
    assert robot[0].parameters["prompt"] == f"a red toy robot, {TRIGGER}"
    assert robot[0].parameters["negative"] == "dark"
    plain = manifest_of(store, layout, "inputs/plain.jpg").variants
    assert len(plain) == 3 and plain[0].parameters["prompt"] == TRIGGER


def test_instruct_pix2pix_through_the_worker(tiny_pix2pix, tmp_path):
    style = {
        "engine": "instruct-pix2pix",
        "model": str(tiny_pix2pix),
        "instruction": "Put a waterfall in the background",
        "image_guidance": 2.1,
        "guidance": 7.5,
        "steps": 3,
        "variants": 2,
        "seed": 1,
    }
    settings = make_settings(tmp_path, {"waterfall": style})
    inputs = {"inputs/a.jpg": photo_bytes(480, 640), "inputs/b.jpg": photo_bytes(160, 120, seed=2),
              "inputs/b.json": b'{"instruction": "Make it snow"}'}
    store, layout = drain(settings, inputs)
    a = manifest_of(store, layout, "inputs/a.jpg").variants
    assert len(a) == 2 and (a[0].width, a[0].height) == (48, 64)
    assert a[0].parameters["instruction"] == "Put a waterfall in the background"
    assert a[0].parameters["image_guidance"] == 2.1 and a[0].parameters["guidance"] == 7.5
    assert a[0].parameters["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
    assert manifest_of(store, layout, "inputs/b.jpg").variants[0].parameters["instruction"] == "Make it snow"


def test_styles_on_one_model_share_weights(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"a": img2img_style(tiny_sd), "b": img2img_style(tiny_sd, scheduler="euler-a")})
    registry = build_registry(settings)
    a, b = registry.engine("a"), registry.engine("b")
    assert a.pipe is not b.pipe
    assert a.pipe.unet is b.pipe.unet and a.pipe.vae is b.pipe.vae and a.pipe.text_encoder is b.pipe.text_encoder
    assert type(a.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert type(b.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert a.pipe.scheduler.config.use_karras_sigmas


def test_sdxl_checkpoint_picks_the_sdxl_img2img_pipeline(tiny_sdxl):
    loader = ModelLoader(ModelSettings())
    engine = Img2ImgEngine("xl", Img2ImgStyle(model=str(tiny_sdxl), steps=2, variants=2), loader)
    engine.setup()
    assert type(engine.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    from PIL import Image

    out = engine(Image.new("RGB", (300, 200), (200, 40, 40)))
    assert [v.image.size for v in out] == [(64, 40), (64, 40)]


def test_pix2pix_model_with_img2img_engine_is_a_config_error(tiny_pix2pix):
    engine = Img2ImgEngine("x", Img2ImgStyle(model=str(tiny_pix2pix)), ModelLoader(ModelSettings()))
    with pytest.raises(ConfigError, match="instruct-pix2pix"):
        engine.setup()


@pytest.mark.parametrize("how", ["config", "env"])
def test_offline_missing_model_fails_at_start_naming_model_and_fix(tmp_path, monkeypatch, how):
    models = {"cache_dir": str(tmp_path / "empty-cache")}
    if how == "config":
        models["offline"] = True
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    style = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion", "rounds": ROUNDS}
    settings = make_settings(tmp_path, {"disney": style}, models=models)
    worker = Worker(LocalStore(settings.store.root), settings, build_registry(settings), worker_id="w1")
    with pytest.raises(ModelUnavailableError) as info:
        worker.setup()
    assert "nitrosocke/mo-di-diffusion" in str(info.value) and "processor models pull" in str(info.value)


def test_local_folder_without_model_index_is_unavailable(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    engine = Img2ImgEngine("x", Img2ImgStyle(model=str(tmp_path / "not-a-model")), ModelLoader(ModelSettings()))
    with pytest.raises(ModelUnavailableError, match=r"model_index\.json"):
        engine.setup()


def test_models_pull_refuses_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    style = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion"}
    make_settings(tmp_path, {"disney": style})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == ConfigError.exit_code
    assert "offline" in capsys.readouterr().err


def test_models_pull_fetches_components_as_safetensors(tmp_path, monkeypatch):
    calls = []
    index = tmp_path / "model_index.json"
    index.write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                "feature_extractor": [None, None],
            }
        )
    )
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(index))

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs))
        folder = tmp_path / "snapshots" / "0123abc"
        (folder / "unet").mkdir(parents=True, exist_ok=True)  # what the download left: the UNet's safetensors
        (folder / "unet" / "diffusion_pytorch_model.safetensors").touch()
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    style = {"engine": "img2img", "model": "nitrosocke/mo-di-diffusion", "revision": "0123abc"}
    make_settings(tmp_path, {"disney": style, "again": style}, models={"cache_dir": str(tmp_path / "cache")})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == 0
    assert len(calls) == 1  # two styles, one model
    repo, kwargs = calls[0]
    assert repo == "nitrosocke/mo-di-diffusion" and kwargs["revision"] == "0123abc"
    assert kwargs["cache_dir"] == str(tmp_path / "cache") and kwargs["local_files_only"] is False
    assert kwargs["allow_patterns"] == component_patterns(json.loads(index.read_text()))
    assert "unet/*.safetensors" in kwargs["allow_patterns"]
    assert not any("safety_checker" in p or p.endswith((".bin", ".ckpt")) for p in kwargs["allow_patterns"])


def test_sizes_keep_aspect_in_multiples_of_8():
    assert working_size(640, 480, 512) == (512, 384)
    assert working_size(480, 640, 512) == (384, 512)
    assert working_size(1000, 333, 1024) == (1024, 344)
    assert working_size(4000, 30, 512) == (512, 8)
    assert build_prompt(None, TRIGGER).text == TRIGGER
    assert build_prompt("a bear ", "cartoon").text == "a bear, cartoon"
    assert sampling.round_seed(5, 0) == 5


def test_zero_denoising_steps_is_refused():
    with pytest.raises(ValueError, match="0 denoising steps"):
        Img2ImgStyle(model="x/y", steps=2, rounds=[{"strength": 0.4}])


def test_shipped_config_styles_parse():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml")
    assert settings.run.styles == ["toon"]
    disney = settings.styles["modern-disney"]
    assert disney.model == "nitrosocke/mo-di-diffusion"
    assert [(r.strength, r.guidance) for r in disney.rounds] == [(0.7, 20), (0.6, 18), (0.5, 16), (0.4, 14)]
    assert settings.styles["anime"].model == "Linaqruf/anything-v3.0"
    edit = settings.styles["waterfall"]
    assert edit.engine == "instruct-pix2pix" and edit.image_guidance == 2.1 and edit.guidance == 7.5


def test_lora_applies_to_its_style_only(tiny_sd, tiny_lora):
    from PIL import Image

    pytest.importorskip("peft")
    image = Image.new("RGB", (64, 48), (30, 120, 200))
    plain_style = Img2ImgStyle(model=str(tiny_sd), steps=2, variants=1, rounds=[{"strength": 0.5}])

    alone = Img2ImgEngine("plain", plain_style, ModelLoader(ModelSettings()))
    alone.setup()
    reference = alone(image)[0].image.tobytes()

    loader = ModelLoader(ModelSettings())
    lora_style = Img2ImgStyle.model_validate(
        plain_style.model_dump() | {"lora": {"path": str(tiny_lora), "scale": 1.0}}
    )
    with_lora = Img2ImgEngine("lora", lora_style, loader)
    plain = Img2ImgEngine("plain", plain_style, loader)
    with_lora.setup()
    plain.setup()
    assert with_lora.pipe.unet is plain.pipe.unet
    lora_out = with_lora(image)[0]
    assert lora_out.parameters["lora"] == {"path": str(tiny_lora), "scale": 1.0, "revision": None}
    assert lora_out.image.tobytes() != reference
    assert plain(image)[0].image.tobytes() == reference  # the shared UNet's adapter is switched off
    assert with_lora(image)[0].image.tobytes() == lora_out.image.tobytes()


def test_img2img_reports_round_and_step_progress_to_the_item_context(tiny_sd, tmp_path):
    """What the claim keeper publishes for a running job (GET /v1/jobs/{id} progress): every
    round, k of N, and each denoising step of it, reported in memory only."""
    from PIL import Image

    from processor.pipeline.base import ItemContext

    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=2, size=64, steps=5)})
    engine = build_registry(settings).engine("disney")
    seen: list[dict] = []
    engine(Image.new("RGB", (96, 64), "orange"), ItemContext(report=lambda **p: seen.append(p)))
    rounds = {(p["round"], p["rounds"]) for p in seen}
    assert rounds == {(1, 3), (2, 3), (3, 3)}
    for k, rnd in enumerate(ROUNDS, start=1):
        steps = [p["step"] for p in seen if p["round"] == k]
        assert steps == list(range(int(5 * rnd["strength"]) + 1))  # 0 (round start), 1 .. its steps
        assert {p["steps"] for p in seen if p["round"] == k} == {int(5 * rnd["strength"])}
    assert {p["stage"] for p in seen} == {"style:disney"}

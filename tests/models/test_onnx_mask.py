"""ONNX salient-object segmenters (``pipeline.mask.onnx``): a tiny model exported from torch in a
fixture, loaded through the production path (file or hub cache, onnxruntime session, family
preprocessing), its fallbacks to GrabCut recorded, and end to end through ``processor run --once``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from processor.cli.main import main
from processor.config import MaskSettings, ModelSettings, OnnxSegmenterSettings, load_settings
from processor.manifest import Manifest
from processor.models.loader import ModelLoader
from processor.models.safeweights import sha256_file
from processor.pipeline.mask import SegmenterKind, SubjectMasker, iou
from processor.pipeline.onnx_segmenter import SegmenterUnavailable, choose_providers
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import encode
from testkit.models.segmenters import build_onnx_segmenter

pytest.importorskip("onnxruntime")


def red_toy(width: int, height: int, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A saturated red figure (body, head, ears, pale belly) off centre on a pale grey wall."""
    rng = np.random.default_rng(seed)
    wall = np.full((height, width, 3), 205.0) + rng.normal(0, 3, (height, width, 3))
    image = Image.fromarray(np.clip(wall, 0, 255).astype(np.uint8))
    truth = Image.new("L", (width, height), 0)
    s = 0.6 * height
    cx, cy = 0.38 * width, 0.55 * height
    parts = [(cx - 0.25 * s, cy - 0.05 * s, cx + 0.25 * s, cy + 0.4 * s),
             (cx - 0.2 * s, cy - 0.42 * s, cx + 0.2 * s, cy - 0.02 * s),
             (cx - 0.24 * s, cy - 0.5 * s, cx - 0.1 * s, cy - 0.34 * s),
             (cx + 0.1 * s, cy - 0.5 * s, cx + 0.24 * s, cy - 0.34 * s)]
    for box in parts:
        ImageDraw.Draw(image).ellipse(box, fill=(200, 40, 50))
        ImageDraw.Draw(truth).ellipse(box, fill=255)
    ImageDraw.Draw(image).ellipse((cx - 0.12 * s, cy + 0.05 * s, cx + 0.12 * s, cy + 0.3 * s), fill=(235, 230, 220))
    return image.filter(ImageFilter.GaussianBlur(0.6)), np.asarray(truth) > 127


def onnx_settings(path: Path, **extra) -> MaskSettings:
    return MaskSettings(onnx=OnnxSegmenterSettings(model=str(path), **extra))


def test_onnx_segmenter_finds_the_toy_through_the_production_path(tiny_onnx):
    photo, truth = red_toy(200, 150)
    masker = SubjectMasker(onnx_settings(tiny_onnx, device="cpu"))
    mask = masker(photo)
    assert mask.method == f"onnx:{tiny_onnx}" and mask.size == photo.size
    seg = mask.segmentation
    assert seg.kind is SegmenterKind.ONNX and seg.fallback is None and seg.family == "u2net"
    assert seg.provider == "CPUExecutionProvider" and seg.sha256 == sha256_file(tiny_onnx)
    assert seg.revision is None  # a local file: the sha256 pins it
    # The belly is not saturated: only filling the cleaned mask's holes keeps it.
    assert iou(mask.hard, truth) >= 0.9, iou(mask.hard, truth)
    assert mask.fallback is None and mask.coverage == pytest.approx(truth.mean(), abs=0.02)


def test_a_large_photo_gets_its_mask_at_full_size(tiny_onnx):
    """The map is cleaned at the model's working size and scaled back up, not cleaned at 0.5 MP."""
    photo, truth = red_toy(1000, 750)
    mask = SubjectMasker(onnx_settings(tiny_onnx)).compute(photo)
    assert mask.size == (1000, 750) and iou(mask.hard, truth) >= 0.9


def test_the_family_normalisation_matters(tiny_onnx):
    """The same graph read as the isnet family (mean 0.5, std 1) sees other colours: the tiny model
    undoes u2net's normalisation, so a wrong family must change the mask."""
    photo, truth = red_toy(160, 120)
    right = SubjectMasker(onnx_settings(tiny_onnx, family="u2net")).compute(photo)
    wrong = SubjectMasker(onnx_settings(tiny_onnx, family="isnet")).compute(photo)
    assert iou(right.hard, truth) >= 0.9 and iou(wrong.hard, truth) < 0.8


def test_birefnet_family_with_dynamic_input_and_logits(tmp_path):
    model = build_onnx_segmenter(tmp_path / "birefnet.onnx", family="birefnet", size=None)
    photo, truth = red_toy(192, 108, seed=1)  # 16:9 into a square input, resized back
    mask = SubjectMasker(onnx_settings(model, family="birefnet", input_size=96)).compute(photo)
    assert mask.segmentation.family == "birefnet" and mask.size == (192, 108)
    assert iou(mask.hard, truth) >= 0.85


@pytest.mark.parametrize("case", ["missing", "garbage", "grey-input"])
def test_unusable_onnx_falls_back_to_grabcut_with_the_reason(tmp_path, case):
    path = tmp_path / "seg.onnx"
    if case == "garbage":
        path.write_bytes(b"this is not a protobuf graph" * 10)
    elif case == "grey-input":
        build_onnx_segmenter(path, channels=1)
    photo, truth = red_toy(160, 120)
    mask = SubjectMasker(onnx_settings(path)).compute(photo)
    reason = {"missing": "does not exist", "garbage": "could not be loaded by onnxruntime",
              "grey-input": "not N x 3 x H x W"}[case]
    seg = mask.segmentation
    assert seg.kind is SegmenterKind.GRABCUT and seg.model == str(path)
    assert reason in seg.fallback and "GrabCut made the mask" in seg.fallback
    assert mask.method == "grabcut" and iou(mask.hard, truth) >= 0.85  # still a usable mask


def _hub_cache(cache: Path, repo: str, commit: str, file: str, source: Path) -> None:
    """The Hugging Face cache layout ``snapshot_download`` reads offline: refs/main -> snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / file
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())


def test_hub_onnx_from_the_model_cache_records_its_commit(tiny_onnx, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(tmp_path / "cache", "toys/u2net-onnx", commit, "onnx/model.onnx", tiny_onnx)
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "cache"))
    settings = MaskSettings(onnx=OnnxSegmenterSettings(model="toys/u2net-onnx", file="onnx/model.onnx"))
    mask = SubjectMasker(settings, loader).compute(red_toy(160, 120)[0])
    seg = mask.segmentation
    assert seg.kind is SegmenterKind.ONNX and seg.revision == commit and seg.file == "onnx/model.onnx"


def test_hub_onnx_missing_offline_names_the_pull_command(tmp_path):
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "empty"))
    settings = MaskSettings(onnx=OnnxSegmenterSettings(model="toys/birefnet-onnx", file="onnx/model.onnx",
                                                       family="birefnet"))
    mask = SubjectMasker(settings, loader).compute(red_toy(160, 120)[0])
    assert mask.segmentation.kind is SegmenterKind.GRABCUT
    assert "processor models pull" in mask.segmentation.fallback


def test_cuda_provider_is_chosen_when_onnxruntime_has_it():
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cuda) == cuda
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("cpu", cuda) == ["CPUExecutionProvider"]
    with pytest.raises(SegmenterUnavailable, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])


def test_onnx_settings_refuse_what_cannot_work():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must be an \.onnx file"):
        OnnxSegmenterSettings(model="toys/seg", file="model.bin")
    with pytest.raises(ValidationError, match="not both"):
        MaskSettings(onnx=OnnxSegmenterSettings(model="a.onnx"), segmenter="someone/segformer")


# --------------------------------------------------------------------------- through the worker


def _run_once(tmp_path: Path, tiny_sd: Path, onnx: dict) -> tuple[LocalStore, Manifest, str]:
    style = {"engine": "toon", "variants": 1, "seed": 3, "max_side": 128,
             "background": {"mode": "generate", "model": str(tiny_sd), "prompt": "a beach", "steps": 2}}
    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")},
           "run": {"styles": ["beach"], "poll_interval_s": 0.05}, "styles": {"beach": style},
           "pipeline": {"contact_sheet": False, "mask": {"onnx": onnx}},
           "metrics": {"port": 0}}  # no fixed port: tests run side by side
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))
    settings = load_settings(tmp_path / "config.yaml")
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.png", encode(red_toy(128, 96)[0], "PNG"))
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0
    keys = KeyLayout(settings.prefixes).for_input("inputs/toy.png")
    return store, Manifest.model_validate_json(store.get(keys.manifest).body), keys.mask


def test_onnx_mask_end_to_end_through_a_background_style(tiny_onnx, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, manifest, mask_key = _run_once(tmp_path, tiny_sd, {"model": str(tiny_onnx), "device": "cpu"})
    bg = manifest.variants[0].background
    assert bg.applied and bg.segmenter == f"onnx:{tiny_onnx}"
    seg = bg.segmentation
    assert seg.kind == "onnx" and seg.model == str(tiny_onnx) and seg.sha256 == sha256_file(tiny_onnx)
    assert seg.provider == "CPUExecutionProvider" and seg.fallback is None
    written = np.asarray(Image.open(io.BytesIO(store.get(mask_key).body))) > 127
    assert iou(written, red_toy(128, 96)[1]) >= 0.85


def test_missing_onnx_is_recorded_in_the_manifest(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "models" / "isnet-general-use.onnx"
    _, manifest, _ = _run_once(tmp_path, tiny_sd, {"model": str(missing), "family": "isnet"})
    bg = manifest.variants[0].background
    assert bg.applied and bg.segmenter == "grabcut"
    assert bg.segmentation.kind == "grabcut" and bg.segmentation.model == str(missing)
    assert "does not exist" in bg.segmentation.fallback


def test_processor_mask_with_an_onnx_model(tiny_onnx, tmp_path):
    photo, truth = red_toy(160, 120)
    (tmp_path / "in").mkdir()
    photo.save(tmp_path / "in" / "toy.png")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"store": {"kind": "local", "root": str(tmp_path / "bucket")}}))
    out = tmp_path / "out"
    assert main(["mask", str(tmp_path / "in"), "--out", str(out), "--onnx", str(tiny_onnx), "--config", str(config),
                 "-q"]) == 0
    (row,) = json.loads((out / "masks.json").read_text())
    assert row["segmenter"] == f"onnx:{tiny_onnx}" and row["segmenter_fallback"] is None
    assert iou(np.asarray(Image.open(out / row["mask"])) > 127, truth) >= 0.9


def test_models_pull_fetches_only_the_onnx_file(tiny_onnx, tmp_path, monkeypatch):
    """``processor models pull``'s segmenter step on a hub ONNX repo: here served from a cache the
    hub client treats as offline (no network), so the resolution path is the production one."""
    import huggingface_hub.constants as hub_constants

    from processor.models.pull_list import Role, addon_models

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    _hub_cache(tmp_path / "cache", "toys/isnet-onnx", commit, "isnet.onnx", tiny_onnx)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    onnx = {"model": "toys/isnet-onnx", "file": "isnet.onnx", "family": "isnet"}
    settings = load_settings(None, pipeline={"mask": {"onnx": onnx}}, models={"cache_dir": str(tmp_path / "cache")})
    [segmenter] = [a for a in addon_models(settings, ModelLoader(settings.models)) if a.role is Role.SEGMENTER]
    fetched = segmenter.fetch(True)
    assert segmenter.shown == "toys/isnet-onnx" and fetched.commit == commit
    assert fetched.path.endswith(f"{commit}/isnet.onnx")
    local = load_settings(None, pipeline={"mask": {"onnx": {"model": str(tiny_onnx)}}})
    assert not [a for a in addon_models(local, ModelLoader(local.models)) if a.role is Role.SEGMENTER]


def test_a_hub_repo_without_the_configured_file_names_the_key_to_set(tiny_onnx, tmp_path):
    """The same resolution serves the dry run (an error naming the key) and the masker (GrabCut, with that reason)."""
    from processor.errors import ModelUnavailableError
    from processor.models.pull_list import Role, addon_models

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    _hub_cache(tmp_path / "cache", "toys/u2net-onnx", commit, "u2net.onnx", tiny_onnx)
    onnx = {"model": "toys/u2net-onnx", "file": "isnet.onnx"}
    settings = load_settings(None, pipeline={"mask": {"onnx": onnx}},
                             models={"cache_dir": str(tmp_path / "cache"), "offline": True})
    [segmenter] = [a for a in addon_models(settings, ModelLoader(settings.models)) if a.role is Role.SEGMENTER]
    with pytest.raises(ModelUnavailableError, match=r"no file 'isnet\.onnx' \(set pipeline\.mask\.onnx\.file\)"):
        segmenter.fetch(False)
    mask = SubjectMasker(settings.pipeline.mask, ModelLoader(settings.models)).compute(red_toy(160, 120)[0])
    assert mask.segmentation.kind is SegmenterKind.GRABCUT
    assert "set pipeline.mask.onnx.file" in mask.segmentation.fallback

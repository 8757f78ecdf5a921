"""The real default segmenter, u2netp (4.5 MB, fetched once into the test model cache by the
``u2netp_model`` fixture): its maps against rembg's own processing of the same file, the masker's
default and its recorded fallbacks, ``processor mask`` and ``models pull --mask``, a worker run.

``rembg_u2netp`` below is the reference: rembg 2.0.77's code for this model, line for line
(``rembg/sessions/base.py`` ``BaseSession.normalize`` and ``rembg/sessions/u2netp.py``
``U2netpSession.predict``, github.com/danielgatis/rembg at tag v2.0.77, MIT licence), with the
session passed in instead of rembg's model download. Checked once by hand against rembg 2.0.77
itself (installed in a throwaway virtual environment): identical masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.mask_scenes import PLACEMENTS, scene_set
from processor.cli.main import main
from processor.config import MaskSettings, ModelSettings, OnnxSegmenterSettings, load_settings
from processor.models.loader import ModelLoader
from processor.models.pinned import pinned_path
from processor.models.segmenters import U2NETP
from processor.pipeline.mask import SegmenterKind, SubjectMasker, clean, iou, upscale
from processor.pipeline.onnx_segmenter import OnnxSegmenter
from testkit.images import encode
from testkit.photos import COMPOSED_KINDS, composed_photo

ort = pytest.importorskip("onnxruntime")

#: The agreement asked of the masks: mean IoU with the reference, and the least any may have.
MIN_MEAN_IOU = 0.9
LOW_IOU = 0.75
#: Share of pictures allowed below ``LOW_IOU`` ("almost none").
MAX_LOW_SHARE = 0.05


def rembg_u2netp(session: Any, img: Image.Image) -> Image.Image:
    """rembg 2.0.77's u2netp mask of ``img`` (see the module docstring)."""
    # BaseSession.normalize(img, mean, std, size)
    mean, std, size = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320)
    im = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)

    im_ary = np.array(im)
    im_ary = im_ary / max(np.max(im_ary), 1e-6)

    tmp_img = np.zeros((im_ary.shape[0], im_ary.shape[1], 3))
    tmp_img[:, :, 0] = (im_ary[:, :, 0] - mean[0]) / std[0]
    tmp_img[:, :, 1] = (im_ary[:, :, 1] - mean[1]) / std[1]
    tmp_img[:, :, 2] = (im_ary[:, :, 2] - mean[2]) / std[2]

    tmp_img = tmp_img.transpose((2, 0, 1))
    inputs = {session.get_inputs()[0].name: np.expand_dims(tmp_img, 0).astype(np.float32)}

    # U2netpSession.predict(img)
    ort_outs = session.run(None, inputs)

    pred = ort_outs[0][:, 0, :, :]

    ma = np.max(pred)
    mi = np.min(pred)

    pred = (pred - mi) / (ma - mi)
    pred = np.squeeze(pred)

    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    mask = mask.resize(img.size, Image.Resampling.LANCZOS)

    return mask


def pictures() -> Iterator[tuple[str, Image.Image]]:
    """Every scene type of the mask benchmark at each of its aspects, the placement turning with
    the aspect (so every placement too: the whole grid is ``python -m bench.masks``'s), and the
    composed photos (two of each room)."""
    aspects = ("3:4", "4:3", "1:1")
    for turn, aspect in enumerate(aspects):
        for scene in scene_set(256, 1, aspects=(aspect,)):
            if scene.placement == turn % len(PLACEMENTS):
                yield f"{scene.kind}-{scene.aspect}-{scene.placement}", scene.image
    for seed in range(2):
        for kind in COMPOSED_KINDS:
            yield f"photo-{kind}-{seed}", composed_photo(kind, seed).image


@pytest.fixture(scope="module")
def reference(u2netp_model: Path) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """Each picture and rembg's mask of it (uint8, 0-255)."""
    session = ort.InferenceSession(str(u2netp_model), providers=["CPUExecutionProvider"])
    return {name: (image, np.asarray(rembg_u2netp(session, image))) for name, image in pictures()}


def agreement(ious: list[float]) -> tuple[float, float]:
    """(mean IoU, share below ``LOW_IOU``)."""
    return float(np.mean(ious)), float(np.mean(np.array(ious) < LOW_IOU))


def test_the_saliency_map_is_rembgs_to_the_level(u2netp_model, reference):
    """The same file through our pre- and post-processing gives rembg's map: the resize, the
    division by the maximum, the normalisation, the min-max scaling and the resize back all match."""
    segmenter = OnnxSegmenter.load(OnnxSegmenterSettings(model=str(u2netp_model), device="cpu"))
    for name, (image, expected) in reference.items():
        ours = np.rint(segmenter(image) * 255).astype(np.int16)
        assert np.abs(ours - expected).max() <= 1, name
        assert iou(ours >= 128, expected >= 128) >= 0.99, name


def test_the_masks_agree_with_rembg(u2netp_model, reference):
    """The default masker's masks (``processor mask``'s, the background styles') against rembg's
    thresholded at half: raw, and after the masker's cleaning applied to both (holes filled,
    largest part kept), which is where they may differ on purpose."""
    masker = SubjectMasker(MaskSettings())
    raw, cleaned = [], []
    for name, (image, expected) in reference.items():
        mask = masker.compute(image)
        assert mask.segmentation.kind is SegmenterKind.ONNX, name
        rembg_hard = expected >= 128
        raw.append(iou(mask.hard, rembg_hard))
        cleaned.append(iou(mask.hard, upscale(clean(rembg_hard), image.size)))
    mean, low = agreement(cleaned)
    assert mean >= MIN_MEAN_IOU and low <= MAX_LOW_SHARE, (mean, low)
    mean_raw, _ = agreement(raw)
    assert mean_raw >= MIN_MEAN_IOU, mean_raw


def test_the_composed_photos_are_found(u2netp_model):
    """The model finds the plush toy in every composed photo (IoU with the true mask)."""
    masker = SubjectMasker(MaskSettings())
    for seed in range(2):
        for kind in COMPOSED_KINDS:
            photo = composed_photo(kind, seed)
            assert iou(masker.compute(photo.image).hard, photo.truth) >= 0.8, (kind, seed)


# --------------------------------------------------------------------------- the default and its fallbacks


def test_the_default_mask_is_the_pinned_u2netp(u2netp_model):
    mask = SubjectMasker(MaskSettings()).compute(composed_photo("window", 0).image)
    seg = mask.segmentation
    assert mask.method == "onnx:u2netp" and seg.model == "u2netp" and seg.family == "u2net"
    assert seg.sha256 == U2NETP.sha256 and seg.revision is None and seg.file is None and seg.fallback is None


def test_offline_without_the_file_grabcut_makes_the_mask_and_says_why(tmp_path, caplog):
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="processor.mask"):
        mask = SubjectMasker(MaskSettings(), loader).compute(composed_photo("kitchen", 0).image)
    seg = mask.segmentation
    assert mask.method == "grabcut" and seg.kind is SegmenterKind.GRABCUT and seg.model == "u2netp"
    assert "not in the model cache" in seg.fallback and "processor models pull --mask" in seg.fallback
    assert "GrabCut made the mask" in seg.fallback
    assert [r for r in caplog.records if r.getMessage() == "segmenter_fallback"]


def test_a_cached_file_with_the_wrong_hash_is_never_used(u2netp_model, tmp_path):
    cache = tmp_path / "cache"
    target = pinned_path(U2NETP, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(u2netp_model.read_bytes()[:-1] + b"\0")  # one byte changed
    loader = ModelLoader(ModelSettings(offline=True, cache_dir=cache))
    mask = SubjectMasker(MaskSettings(), loader).compute(composed_photo("sofa", 0).image)
    assert mask.segmentation.kind is SegmenterKind.GRABCUT
    assert "not the pinned 309c8469" in mask.segmentation.fallback and "delete it" in mask.segmentation.fallback


def test_a_transformers_segmenter_replaces_the_default_and_null_means_grabcut():
    assert MaskSettings(segmenter="nvidia/segformer-b0-finetuned-ade-512-512").onnx is None
    assert MaskSettings(onnx=None).onnx is None
    assert MaskSettings().onnx == OnnxSegmenterSettings(model="u2netp")
    tuned = load_settings(None, pipeline={"mask": {"onnx": {"threshold": 0.4}}}).pipeline.mask.onnx
    assert tuned is not None and tuned.model == "u2netp" and tuned.threshold == 0.4
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="of the 'u2net' family"):
        OnnxSegmenterSettings(model="u2netp", family="isnet")


# --------------------------------------------------------------------------- the commands


def test_processor_mask_with_no_flags_uses_the_real_model(u2netp_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for kind in COMPOSED_KINDS[:2]:
        (photos / f"{kind}.jpg").write_bytes(encode(composed_photo(kind, 0).image, "JPEG"))
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"store": {"kind": "local", "root": str(tmp_path / "bucket")}}))
    out = tmp_path / "out"
    assert main(["mask", str(photos), "--out", str(out), "--config", str(config), "-q"]) == 0
    rows = json.loads((out / "masks.json").read_text())
    assert [r["segmenter"] for r in rows] == ["onnx:u2netp"] * 2
    assert all(r["segmenter_fallback"] is None for r in rows)
    for row in rows:
        truth = composed_photo(Path(row["path"]).stem, 0).truth
        assert iou(np.asarray(Image.open(out / row["mask"])) > 127, truth) >= 0.8
        assert Image.open(out / row["overlay"]).info.get("icc_profile")  # tagged sRGB
    assert "2 masks (onnx:u2netp)" in capsys.readouterr().out
    # --grabcut: the weight-free segmenter on the same photos, for comparison.
    assert main(["mask", str(photos), "--out", str(tmp_path / "gc"), "--grabcut", "--config", str(config), "-q"]) == 0
    assert {r["segmenter"] for r in json.loads((tmp_path / "gc" / "masks.json").read_text())} == {"grabcut"}


def test_models_pull_mask_fetches_the_segmenter_alone(u2netp_model, tmp_path, capsys, monkeypatch):
    """Here served from a prepared cache (the fetch itself is ``u2netp_model``'s); the diffusion
    models of the shipped config are not touched."""
    cache = tmp_path / "cache"
    target = pinned_path(U2NETP, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(u2netp_model.read_bytes())
    root = Path(__file__).resolve().parents[2]
    args = ["--config", str(root / "config.yaml")]
    monkeypatch.setenv("PROCESSOR_MODELS__CACHE_DIR", str(cache))
    assert main(["models", "pull", "--mask", *args]) == 0
    assert capsys.readouterr().out.strip() == f"segmenter u2netp: {target}"
    assert main(["models", "pull", "--mask", "--dry-run", *args]) == 0
    assert f"segmenter u2netp: cached: {target}" in capsys.readouterr().out


# --------------------------------------------------------------------------- through the worker


def test_a_background_style_records_the_real_model(u2netp_model, tiny_sd, tmp_path, monkeypatch):
    from processor.manifest import Manifest
    from processor.queue.keys import KeyLayout
    from processor.store.local import LocalStore

    monkeypatch.chdir(tmp_path)
    style = {"engine": "toon", "variants": 1, "seed": 3, "max_side": 192,
             "background": {"mode": "generate", "model": str(tiny_sd), "prompt": "a beach", "steps": 2}}
    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")},
           "run": {"styles": ["beach"], "poll_interval_s": 0.05}, "styles": {"beach": style},
           "pipeline": {"contact_sheet": False}}
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))
    settings = load_settings(tmp_path / "config.yaml")
    store = LocalStore(settings.store.root)
    photo = composed_photo("window", 1)
    store.put("inputs/toy.jpg", encode(photo.image, "JPEG"))
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0
    keys = KeyLayout(settings.prefixes).for_input("inputs/toy.jpg")
    manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
    bg = manifest.variants[0].background
    assert bg.applied and bg.segmenter == "onnx:u2netp"
    assert bg.segmentation.kind == "onnx" and bg.segmentation.sha256 == U2NETP.sha256
    assert bg.segmentation.fallback is None


def test_the_mask_bench_scores_the_real_model_beside_grabcut(u2netp_model, capsys):
    from bench import masks as mask_bench

    results = mask_bench.main(["--long-side", "160", "--aspects", "1:1", "--types", "wall,hand", "--composed", "1"])
    assert results["composed"] == len(COMPOSED_KINDS)
    for segmenter in ("grabcut", "u2netp"):
        assert {f"{segmenter}_{k}_iou" for k in ("wall", "hand", "mean", "worst_type", "composed")} <= set(results)
    # The composed photos (closer to a phone's than the flat scenes): the model finds the toy.
    assert results["u2netp_composed_iou"] >= 0.9

"""The CLIP image-similarity score (``pipeline.clip_score``): a tiny random-weight transformers
CLIPModel loaded through the production path, scores in the manifest and on the contact sheet,
``run.order_variants_by: clip``, and what a wrong configuration says."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from processor.cli.compose import needs_torch
from processor.cli.main import main
from processor.config import ClipScoreSettings, DecodeSettings, ModelSettings, load_settings
from processor.errors import ConfigError, ModelUnavailableError
from processor.manifest import Manifest
from processor.models.loader import ModelLoader
from processor.pipeline import outputs
from processor.pipeline.clipscore import ClipScorer, subject_box
from processor.pipeline.decode import decode_image
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes

PHOTO = photo_bytes(320, 240, seed=6)


def photo() -> Image.Image:
    return decode_image(PHOTO, DecodeSettings(), name="toy.jpg").image


def scorer(model: Path) -> ClipScorer:
    s = ClipScorer(ClipScoreSettings(model=str(model)), ModelLoader(ModelSettings()))
    s.setup()
    return s


def test_the_photo_itself_scores_one_and_every_score_is_a_cosine(tiny_hf_clip):
    image = photo()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    other = decode_image(photo_bytes(320, 240, seed=9), DecodeSettings(), name="other.jpg").image
    same, rotated, random, blank, small = scorer(tiny_hf_clip)(
        image, [image.copy(), image.rotate(90), noise, Image.new("RGB", (320, 240), "white"),
                image.resize((64, 48), Image.Resampling.LANCZOS)])
    assert same.similarity == pytest.approx(1.0, abs=1e-4)
    assert small.similarity > 0.99  # the same picture at the variant's size
    for s in (same, rotated, random, blank, small):
        assert -1.0 <= s.similarity <= 1.0
        assert (s.region, s.model, s.revision) == ("image", str(tiny_hf_clip), None)
    assert max(rotated.similarity, random.similarity, blank.similarity) < same.similarity
    [versus_other] = scorer(tiny_hf_clip)(image, [other])
    assert versus_other.similarity < same.similarity


def test_the_subject_box_is_the_mask_bounds_with_a_margin():
    alpha = np.zeros((100, 200), np.uint8)
    alpha[20:60, 50:150] = 255
    box = subject_box(alpha)
    assert box is not None
    assert (box.left, box.top, box.right, box.bottom) == pytest.approx((0.2, 0.16, 0.8, 0.64))
    # The same fractions crop a variant at another size to the same part of the picture.
    assert box.crop(Image.new("RGB", (100, 50))).size == (60, 24)
    assert subject_box(np.zeros((10, 10), np.uint8)) is None
    edge = np.zeros((10, 10), np.uint8)
    edge[0:10, 0:3] = 255
    clamped = subject_box(edge)
    assert clamped is not None and (clamped.left, clamped.top, clamped.bottom) == (0.0, 0.0, 1.0)


def write_config(tmp_path: Path, clip: object, **run: object) -> Path:
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon", "flat"], "poll_interval_s": 0.05, **run},
        "styles": {"toon": {"engine": "toon", "variants": 4, "max_side": 256, "seed": 4},
                   "flat": {"engine": "toon", "variants": 1, "max_side": 256, "colors": [4, 5]}},
        "pipeline": {"contact_sheet_height": 32, "clip_score": clip},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def run_once(config: Path, monkeypatch) -> tuple[LocalStore, Manifest, list[str]]:
    """``processor run --once`` over one photo; the contact sheet's tile labels as drawn."""
    labels: list[str] = []
    real = outputs.contact_sheet

    def spy(original, tiles, **kwargs):
        labels.extend(kwargs["labels"])
        return real(original, tiles, **kwargs)

    monkeypatch.setattr(outputs, "contact_sheet", spy)
    settings = load_settings(config)
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.jpg", PHOTO)
    assert main(["run", "--once", "--metrics-port", "0", "--config", str(config)]) == 0
    body = store.get(KeyLayout(settings.prefixes).for_input("inputs/toy.jpg").manifest).body
    return store, Manifest.model_validate_json(body), labels


def independent_similarity(model: Path, a: Image.Image, b: Image.Image) -> float:
    """The cosine of CLIP image embeddings computed here with transformers directly."""
    from transformers import CLIPImageProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(model, use_safetensors=True).eval()
    pixels = CLIPImageProcessor.from_pretrained(model)(images=[a, b], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = clip.get_image_features(pixel_values=pixels)
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    features = torch.nn.functional.normalize(features, dim=-1)
    return float(features[0] @ features[1])


def test_every_variant_is_scored_in_the_manifest_and_on_the_contact_sheet(tiny_hf_clip, tmp_path, monkeypatch):
    store, manifest, labels = run_once(write_config(tmp_path, {"model": str(tiny_hf_clip)}), monkeypatch)
    assert [(v.style, v.index) for v in manifest.variants] == [("toon", i) for i in range(4)] + [("flat", 0)]
    for v, label in zip(manifest.variants, labels[1:], strict=True):
        assert v.clip is not None and v.structure is not None  # beside the structure score
        assert (v.clip.region, v.clip.model, v.clip.revision) == ("image", str(tiny_hf_clip), None)
        assert -1.0 <= v.clip.similarity <= 1.0
        assert label == f"{v.style} #{v.index} s{v.structure.f1:.2f} c{v.clip.similarity:.2f}"
        # The recorded number is the real cosine of photo and the variant as written.
        variant = Image.open(io.BytesIO(store.get(v.key).body)).convert("RGB")
        assert v.clip.similarity == pytest.approx(independent_similarity(tiny_hf_clip, photo(), variant), abs=2e-3)
    assert "clip" in manifest.timings


def test_order_variants_by_clip_ranks_each_style_most_similar_first(tiny_hf_clip, tmp_path, monkeypatch):
    _, plain, _ = run_once(write_config(tmp_path / "plain", {"model": str(tiny_hf_clip)}), monkeypatch)
    _, ranked, labels = run_once(write_config(tmp_path / "ranked", {"model": str(tiny_hf_clip)},
                                              order_variants_by="clip"), monkeypatch)
    by_index = {(v.style, v.index): v.clip.similarity for v in plain.variants}
    expected = sorted((k for k in by_index if k[0] == "toon"), key=lambda k: (-by_index[k], k[1]))
    toon = [v for v in ranked.variants if v.style == "toon"]
    assert [(v.style, v.index) for v in toon] == expected  # the order the unordered run's scores give
    assert [v.clip.similarity for v in toon] == sorted(by_index[k] for k in expected)[::-1]
    assert [v.style for v in ranked.variants] == ["toon"] * 4 + ["flat"]  # styles keep their order
    assert all(v.key.endswith(f"{v.style}-{v.index:02d}.png") for v in ranked.variants)  # files keep names
    assert labels[1:] == [f"{v.style} #{v.index} s{v.structure.f1:.2f} c{v.clip.similarity:.2f}"
                          for v in ranked.variants]


def test_with_a_subject_mask_the_score_compares_the_subject_crop(tiny_hf_clip, tmp_path, monkeypatch):
    config = write_config(tmp_path, {"model": str(tiny_hf_clip)})
    raw = json.loads(config.read_text())
    raw["pipeline"]["structure_mask"] = True  # GrabCut finds the toy: both scores judge the subject
    raw["pipeline"]["mask"] = {"onnx": None}
    config.write_text(json.dumps(raw))
    _, manifest, _ = run_once(config, monkeypatch)
    assert all(v.clip is not None and v.clip.region == "subject" for v in manifest.variants)
    assert all(v.structure is not None and v.structure.region == "subject" for v in manifest.variants)


def test_ordering_by_clip_without_a_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"order_variants_by: clip needs pipeline\.clip_score"):
        load_settings(write_config(tmp_path, None, order_variants_by="clip"))
    with pytest.raises(ConfigError, match=r"pipeline\.clip_score\.model"):
        load_settings(write_config(tmp_path, {"revision": "main"}))


def test_a_missing_or_wrong_model_fails_at_start_naming_the_key(tiny_sd, tmp_path):
    missing = ClipScorer(ClipScoreSettings(model=str(tmp_path / "nope")), ModelLoader(ModelSettings()))
    with pytest.raises(ModelUnavailableError, match=r"pipeline\.clip_score\.model"):
        missing.setup()
    # A diffusers folder is not a CLIPModel: it says what is required.
    wrong = ClipScorer(ClipScoreSettings(model=str(tiny_sd)), ModelLoader(ModelSettings()))
    with pytest.raises(ModelUnavailableError, match=r"pipeline\.clip_score\.model.*CLIPModel"):
        wrong.setup()
    offline = ClipScorer(ClipScoreSettings(model="example/clip-not-cached"),
                         ModelLoader(ModelSettings(offline=True, cache_dir=tmp_path / "cache")))
    with pytest.raises(ModelUnavailableError, match=r"processor models pull"):
        offline.setup()


def test_only_a_configured_score_makes_a_toon_worker_need_torch(tiny_hf_clip, tmp_path):
    assert not needs_torch(load_settings(write_config(tmp_path / "a", None)), ["toon", "flat"])
    assert needs_torch(load_settings(write_config(tmp_path / "b", {"model": str(tiny_hf_clip)})), ["toon", "flat"])


def test_a_hub_model_loads_offline_at_its_pinned_revision_and_records_the_commit(tiny_hf_clip, tmp_path):
    from tests.models.test_convert_pickle import hub_cache

    cache, commit = tmp_path / "hf-cache", "d" * 40
    hub_cache(cache, "toys/tiny-hf-clip", tiny_hf_clip, commit)
    (cache / "models--toys--tiny-hf-clip" / "refs" / "v1").write_text(commit)
    models = ModelLoader(ModelSettings(offline=True, cache_dir=cache))
    hub = ClipScorer(ClipScoreSettings(model="toys/tiny-hf-clip", revision="v1"), models)
    hub.setup()
    [score] = hub(photo(), [photo()])
    assert (score.model, score.revision) == ("toys/tiny-hf-clip", commit)
    assert score.similarity == pytest.approx(1.0, abs=1e-4)
    # Another revision is not in the cache: it says so and names the pull, not some other commit.
    other = ClipScorer(ClipScoreSettings(model="toys/tiny-hf-clip", revision="v2"), models)
    with pytest.raises(ModelUnavailableError, match=r"pipeline\.clip_score\.model.*processor models pull"):
        other.setup()

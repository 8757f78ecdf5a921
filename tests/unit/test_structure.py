"""The weight-free structure score (``processor.pipeline.structure``) and where it shows: each
variant's manifest entry, the contact sheet labels and ``run.order_variants_by``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import ConfigError
from processor.manifest import Manifest
from processor.pipeline import outputs
from processor.pipeline.base import VariantImage
from processor.pipeline.item import order_by_structure
from processor.pipeline.structure import StructureScore, structure_score
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes, photo_image


def test_the_photo_itself_scores_one_and_a_blank_scores_zero():
    photo = photo_image(256, 192, seed=1)
    same = structure_score(photo, photo)
    assert (same.f1, same.precision, same.recall, same.region) == (1.0, 1.0, 1.0, "image")
    assert same.tolerance_px == 3  # 1% of 256, rounded
    assert structure_score(photo, Image.new("RGB", photo.size, (128, 128, 128))).f1 == 0.0


def test_a_restyled_toy_outscores_another_toy_and_noise():
    photo = photo_image(256, 192, seed=1)
    # A "cartoon" of the same toy: posterised colours, softened, shifted one pixel.
    cartoon = photo.quantize(8).convert("RGB").filter(ImageFilter.GaussianBlur(1)).transform(
        photo.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0))
    other_toy = photo_image(256, 192, seed=9)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 256, 3), dtype=np.uint8), "RGB")
    kept, other, random = (structure_score(photo, x).f1 for x in (cartoon, other_toy, noise))
    assert kept > 0.6 and kept > other + 0.2 and kept > random + 0.2


def test_the_mask_judges_the_subject_not_the_background():
    photo = photo_image(256, 192, seed=2)
    mask = np.zeros((192, 256), dtype=np.uint8)
    mask[60:190, 60:200] = 255  # the toy's region in photo_image's layout
    # The toy kept as is, the background replaced by busy stripes.
    busy = np.asarray(photo).copy()
    busy[::6, :, :] = 0
    busy[mask > 0] = np.asarray(photo)[mask > 0]
    variant = Image.fromarray(busy, "RGB")
    inside, whole = structure_score(photo, variant, mask), structure_score(photo, variant)
    assert inside.region == "subject" and whole.region == "image"
    assert inside.f1 > whole.f1 + 0.2


def test_a_smaller_variant_is_compared_with_the_photo_at_its_size():
    photo = photo_image(640, 480, seed=3)
    assert structure_score(photo, photo.resize((64, 48), Image.Resampling.LANCZOS)).f1 == 1.0


def variant(style: str, index: int, f1: float | None) -> VariantImage:
    score = None if f1 is None else StructureScore(f1=f1, precision=f1, recall=f1, region="subject", tolerance_px=1)
    return VariantImage(style=style, engine="toon", index=index, seed=index, image=Image.new("RGB", (8, 8)),
                        structure=score)


def test_ordering_ranks_within_each_style_and_keeps_the_style_order():
    got = order_by_structure([variant("b", 0, 0.2), variant("b", 1, 0.9), variant("a", 0, 0.5),
                              variant("a", 1, 0.5), variant("a", 2, 0.7)])
    assert [(v.style, v.index) for v in got] == [("b", 1), ("b", 0), ("a", 2), ("a", 0), ("a", 1)]


def make_settings(tmp_path: Path, structure_mask: bool = True, **run: object):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon", "flat"], "poll_interval_s": 0.05, **run},
        "styles": {"toon": {"engine": "toon", "variants": 3, "max_side": 256, "seed": 4},
                   "flat": {"engine": "toon", "variants": 1, "max_side": 256, "colors": [4, 5]}},
        # GrabCut: the unit tier loads no weights.
        "pipeline": {"contact_sheet_height": 32, "structure_mask": structure_mask, "mask": {"onnx": None}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def run_once(settings, monkeypatch, legends: list[str | None] | None = None) -> tuple[Manifest, list[str]]:
    labels: list[str] = []
    real = outputs.contact_sheet

    def spy(original, tiles, **kwargs):
        labels.extend(kwargs["labels"])
        if legends is not None:
            legends.append(kwargs.get("legend"))
        return real(original, tiles, **kwargs)

    monkeypatch.setattr(outputs, "contact_sheet", spy)
    store = LocalStore(settings.store.root)
    store.put("inputs/toy.jpg", photo_bytes(320, 240, seed=6))
    worker = Worker(store, settings, build_registry(settings), worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0
    body = store.get(KeyLayout(settings.prefixes).for_input("inputs/toy.jpg").manifest).body
    return Manifest.model_validate_json(body), labels


def test_every_variant_is_scored_in_the_manifest_and_on_the_contact_sheet(tmp_path, monkeypatch):
    manifest, labels = run_once(make_settings(tmp_path), monkeypatch)
    assert [(v.style, v.index) for v in manifest.variants] == [("toon", 0), ("toon", 1), ("toon", 2), ("flat", 0)]
    for v, label in zip(manifest.variants, labels[1:], strict=True):
        assert v.structure is not None and v.structure.region == "subject"  # GrabCut found the toy
        assert 0.0 < v.structure.f1 <= 1.0
        assert label == f"{v.style} #{v.index} s{v.structure.f1:.2f}"
    assert "structure" in manifest.timings


def test_the_contact_sheet_says_what_its_score_labels_mean(tmp_path, monkeypatch):
    """A label's "s0.53" is explained by the sheet's legend, drawn under the tiles."""
    legends: list[str | None] = []
    run_once(make_settings(tmp_path), monkeypatch, legends)
    assert legends == [outputs.STRUCTURE_LEGEND] and legends[0].startswith("s = structure")
    store = LocalStore(make_settings(tmp_path).store.root)
    sheet_key = KeyLayout(make_settings(tmp_path).prefixes).for_input("inputs/toy.jpg").contact_sheet
    with Image.open(io.BytesIO(store.get(sheet_key).body)) as sheet:
        grey = np.asarray(sheet.convert("L"))
    # The legend's line(s): dark text in a white strip below the last row of tiles (32 px + label).
    below = grey[4 + 32 + 16 + 4:]
    assert below.shape[0] >= 16 and (below < 128).sum() > 50, below.shape


def test_without_a_mask_at_hand_the_score_covers_the_whole_image(tmp_path, monkeypatch):
    """The default: toon-only workers compute no subject mask just for the score."""
    manifest, labels = run_once(make_settings(tmp_path, structure_mask=False), monkeypatch)
    assert all(v.structure is not None and v.structure.region == "image" for v in manifest.variants)
    assert [label.rsplit(" s", 1)[0] for label in labels[1:]] == [f"{v.style} #{v.index}" for v in manifest.variants]


def test_order_variants_by_structure_ranks_each_style_best_first(tmp_path, monkeypatch):
    manifest, labels = run_once(make_settings(tmp_path, order_variants_by="structure"), monkeypatch)
    toon = [v for v in manifest.variants if v.style == "toon"]
    scores = [v.structure.f1 for v in toon]
    assert scores == sorted(scores, reverse=True)
    assert sorted(v.index for v in toon) == [0, 1, 2]
    assert all(v.key.endswith(f"toon-{v.index:02d}.png") for v in toon)  # files keep their names
    assert labels[1:] == [f"{v.style} #{v.index} s{v.structure.f1:.2f}" for v in manifest.variants]


def test_ordering_without_scores_is_a_config_error(tmp_path):
    cfg = make_settings(tmp_path)  # writes config.yaml
    assert cfg.pipeline.structure_score
    path = tmp_path / "config.yaml"
    raw = json.loads(path.read_text())
    raw["run"]["order_variants_by"] = "structure"
    raw["pipeline"]["structure_score"] = False
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"order_variants_by: structure needs pipeline\.structure_score"):
        load_settings(path)

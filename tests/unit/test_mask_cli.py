"""``processor mask FILE_OR_DIR... --out DIR``: masks, overlays and masks.json for a folder of
photos, a bad file reported without stopping the rest, and an unusable ONNX model's fallback."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bench.mask_scenes import make_scene
from processor.cli.main import main
from processor.pipeline.mask import iou
from testkit.images import encode


def _config(tmp_path) -> str:
    """GrabCut (no weights): the default model's own tests are ``tests/models/test_real_mask.py``."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"store": {"kind": "local", "root": str(tmp_path / "bucket")},
                                "pipeline": {"mask": {"onnx": None}}}))
    return str(path)


def test_mask_on_a_folder_writes_masks_overlays_and_a_summary(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "shelf").mkdir(parents=True)
    scenes = {
        "floor.jpg": make_scene("floor", "4:3", 0, 0, 160),
        "shelf/cow.png": make_scene("shelf", "3:4", 1, 0, 160),
    }
    for name, scene in scenes.items():
        (photos / name).write_bytes(encode(scene.image, "JPEG" if name.endswith(".jpg") else "PNG"))
    (photos / "shelf" / "cow.json").write_text("{}")          # a sidecar: not a photo
    (photos / "notes.png").write_bytes(b"not a picture at all")  # a bad file: reported, skipped
    out = tmp_path / "out"
    assert main(["mask", str(photos), "--out", str(out), "--config", _config(tmp_path), "-q"]) == 1
    summary = {r["path"]: r for r in json.loads((out / "masks.json").read_text())}
    assert sorted(summary) == ["floor.jpg", "notes.png", "shelf/cow.png"]
    assert summary["notes.png"]["error"] and summary["notes.png"]["mask"] is None
    for name, scene in scenes.items():
        row = summary[name]
        mask = Image.open(out / row["mask"])
        overlay = Image.open(out / row["overlay"])
        assert mask.mode == "L" and mask.size == overlay.size == scene.image.size
        assert iou(np.asarray(mask) > 127, scene.truth) >= 0.8, name
        assert row["segmenter"] == "grabcut" and row["error"] is None and 0 < row["coverage"] < 1
        # The overlay dims the background and keeps the subject's own pixels away from its outline.
        photo, shown = np.asarray(scene.image.convert("RGB"), float), np.asarray(overlay, float)
        background = ~np.asarray(mask).astype(bool)
        assert (shown[background].mean(axis=0) != photo[background].mean(axis=0)).all()
    assert (out / "shelf" / "cow.mask.png").is_file()  # relative paths kept
    printed = capsys.readouterr()
    assert "2 masks (grabcut)" in printed.out and "1 failed" in printed.out and "notes.png" in printed.err


def test_mask_with_a_missing_onnx_model_says_grabcut_made_it(tmp_path, capsys):
    photo = tmp_path / "toy.png"
    photo.write_bytes(encode(make_scene("wall", "1:1", 0, 0, 128).image, "PNG"))
    missing = tmp_path / "u2net.onnx"
    assert main(["mask", str(photo), "--out", str(tmp_path / "out"), "--onnx", str(missing),
                 "--config", _config(tmp_path), "-q"]) == 0
    (row,) = json.loads((tmp_path / "out" / "masks.json").read_text())
    assert row["segmenter"] == "grabcut" and "does not exist" in row["segmenter_fallback"]
    assert "GrabCut made the mask" in capsys.readouterr().err


def test_mask_explains_itself(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["mask", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--onnx" in text and "overlay" in text and "masks.json" in text

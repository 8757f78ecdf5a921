"""The README's real-run instrument (``bench.real_run``), smoke-run on the CPU with the tiny model.

Speed is not checked here; what is checked is that it runs the shipped ``modern-disney`` style
through the CLI unchanged but for the model: every image committed with the shipped variants and
rounds, both orientations kept, and the figures printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench import real_run
from bench.common import parse_report

ROOT = Path(__file__).resolve().parents[2]


def test_real_run_tiny_runs_the_shipped_style(tiny_sd, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    kept = tmp_path / "kept"
    results = real_run.main(["--tiny", "--model", str(tiny_sd), "--images", "2", "--device", "cpu",
                             "--keep", str(kept)])
    printed = parse_report(capsys.readouterr().out)

    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["styles"]["modern-disney"]
    assert results["variants_made"] == 2 * shipped["variants"]
    assert printed["rounds"] == " ".join(f"{r['strength']}/{r['guidance']}" for r in shipped["rounds"])
    for key in ("wall_s", "first_image_s", "s_per_image", "median_style:modern-disney_s", "weights_float32_gib"):
        assert float(printed[key]) > 0, key
    # The synthetic photos alternate 640x480 and 480x640: both orientations come out kept.
    sizes = {tuple(map(int, s.split("x"))) for s in results["size_used"].split()}
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    manifests = [json.loads(p.read_text()) for p in sorted((kept / "outputs").rglob("manifest.json"))]
    assert len(manifests) == 2
    for manifest in manifests:
        variant = manifest["variants"][0]
        assert variant["style"] == "modern-disney"
        assert len(variant["parameters"]["rounds"]) == len(shipped["rounds"])


def test_weights_only_counts_the_sd15_architecture(capsys) -> None:
    results = real_run.main(["--weights-only"])
    # SD 1.5's published UNet has 859,520,964 parameters: the benchmark's model is that architecture.
    assert round(results["unet_params_millions"] * 1e6) == 859_520_964
    assert 1000 < results["weights_params_millions"] < 1100
    assert parse_report(capsys.readouterr().out)["weights_float32_gib"]

"""The Space's progress bar on a real (tiny, random-weight) img2img style: the engine's reports go
through ``ItemPipeline.compute`` to one Gradio bar per round, counting that round's steps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from testkit.images import photo_bytes
from tests.models.test_diffusion import ROUNDS, img2img_style, make_settings

pytest.importorskip("gradio", reason="gradio is not installed (the space extra)")
APP = Path(__file__).resolve().parents[2] / "deploy" / "space" / "app.py"


def load_app():
    if "space_app" in sys.modules:
        return sys.modules["space_app"]
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module
    spec.loader.exec_module(module)
    return module


def test_one_bar_per_round_over_its_steps(tiny_sd, tmp_path) -> None:
    app = load_app()
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=1, size=64, steps=5)})
    photo = tmp_path / "toy.jpg"
    photo.write_bytes(photo_bytes(96, 64))
    calls: list[tuple[object, str]] = []
    bridge = app.ProgressBridge(lambda value, desc, **_: calls.append((value, desc)))
    result = app.Cartoonizer(settings)(str(photo), "disney", 1, 3, report=bridge)
    assert len(result.gallery) == 1 and result.details["variants"][0]["seed"] == 3
    for k, rnd in enumerate(ROUNDS, start=1):
        steps = int(5 * rnd["strength"])
        bar = [value for value, desc in calls if desc == f"disney · round {k} of {len(ROUNDS)}"]
        assert bar == [(s, steps) for s in range(steps + 1)], (k, bar)  # from 0 to full, once a round

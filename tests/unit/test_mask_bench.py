"""The mask benchmark's scene set in CI, with the issue's goals for the weight-free GrabCut path
(mean IoU >= 0.85, worst scene type >= 0.7), at a small size so it stays fast."""

from __future__ import annotations

import numpy as np
import pytest

from bench import masks as mask_bench
from bench.common import parse_report
from bench.mask_scenes import ASPECTS, PLACEMENTS, SCENE_TYPES, make_scene, scene_set


def test_grabcut_meets_the_goals_on_every_scene_type(capsys):
    results = mask_bench.main(["--long-side", "160", "--segmenters", "grabcut"])
    printed = parse_report(capsys.readouterr().out)
    assert results["scenes"] == len(SCENE_TYPES) * 3 * len(PLACEMENTS)
    for kind in SCENE_TYPES:
        assert float(printed[f"grabcut_{kind}_iou"]) == results[f"grabcut_{kind}_iou"]
        assert results[f"grabcut_{kind}_iou"] >= mask_bench.GOAL_WORST_TYPE_IOU, kind
    assert results["grabcut_mean_iou"] >= mask_bench.GOAL_MEAN_IOU
    assert results["grabcut_worst_type_iou"] == min(results[f"grabcut_{k}_iou"] for k in SCENE_TYPES)


def test_scenes_are_reproducible_and_shaped_as_asked():
    a, b = make_scene("hand", "3:4", 1, 0, 128), make_scene("hand", "3:4", 1, 0, 128)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and np.array_equal(a.truth, b.truth)
    assert a.image.size == (96, 128) and a.truth.shape == (128, 96)
    other = make_scene("hand", "3:4", 1, 1, 128)
    assert not np.array_equal(np.asarray(a.image), np.asarray(other.image))
    for scene in scene_set(96, aspects=tuple(ASPECTS)):
        assert 0.02 < scene.truth.mean() < 0.8, (scene.kind, scene.aspect, scene.placement)
    with pytest.raises(ValueError, match="unknown scene type"):
        make_scene("beach", "1:1", 0, 0)


def test_a_cut_off_placement_touches_the_bottom_edge():
    """Placement 2 is a toy photographed close: the frame cuts its feet off."""
    assert make_scene("floor", "4:3", 2, 0, 160).truth[-1].any()
    assert not make_scene("wall", "4:3", 0, 0, 160).truth[-1].any()

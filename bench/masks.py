"""Mask benchmark: IoU of each segmenter against the true mask of synthetic toy photos.

    python -m bench.masks [--long-side 256] [--seeds 1] [--segmenters grabcut,u2netp] [--composed 2]
                          [--onnx MODEL.onnx --family u2net]

Scenes come from ``bench.mask_scenes`` (every scene type at every placement and aspect ratio);
``--composed N`` adds N composed photos of each room of ``testkit.photos`` (a plush toy on a
table in front of a room out of focus, with lens blur, noise and JPEG), scored apart as
``<segmenter>_composed_iou`` (their mean) and not counted in the scene figures.
Segmenters: ``grabcut`` (no weights), ``u2netp`` (the default real model, from the model cache;
fetched first when it is missing and the network allows) and, with ``--onnx``, any ONNX file as
``onnx``. Prints, per segmenter, one ``<segmenter>_<scene type>_iou`` line per scene type (the
mean over its scenes), ``<segmenter>_mean_iou`` (over all scenes), ``<segmenter>_worst_type_iou``
and the seconds per mask. A model that cannot be loaded stops the run with the reason (its masks
would be GrabCut's). Synthetic scenes are not real photos: the figures compare the segmenters on
one set, they do not predict the share of real photos each gets right.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.mask_scenes import ASPECTS, SCENE_TYPES, scene_set
from processor.config import MaskSettings

#: The issue's goals for the weight-free GrabCut path.
GOAL_MEAN_IOU = 0.85
GOAL_WORST_TYPE_IOU = 0.7
#: The segmenters ``--segmenters`` chooses from: GrabCut and the default real model.
SEGMENTERS = {"grabcut": MaskSettings(onnx=None), "u2netp": MaskSettings()}


@dataclass(frozen=True)
class SegmenterScore:
    segmenter: str
    by_type: dict[str, float]
    mean: float
    worst_type: str
    seconds_per_mask: float
    scenes: int

    @property
    def worst(self) -> float:
        return self.by_type[self.worst_type]

    def report(self) -> dict[str, float]:
        out = {f"{self.segmenter}_{kind}_iou": round(v, 4) for kind, v in self.by_type.items()}
        out |= {
            f"{self.segmenter}_mean_iou": round(self.mean, 4),
            f"{self.segmenter}_worst_type_iou": round(self.worst, 4),
            f"{self.segmenter}_seconds_per_mask": round(self.seconds_per_mask, 4),
        }
        return out


def ready_masker(name: str, settings: MaskSettings) -> Any:
    """A set-up ``SubjectMasker``; a model that fell back to GrabCut ends the run with its reason."""
    from processor.pipeline.mask import SubjectMasker

    masker = SubjectMasker(settings)
    masker.setup()
    if masker.segmentation.fallback:
        raise SystemExit(f"{name}: {masker.segmentation.fallback}")
    return masker


def score(name: str, masker: Any, scenes: Sequence[Any]) -> SegmenterScore:
    """Mean IoU of ``masker`` (a ``SubjectMasker``) per scene type and over all ``scenes``."""
    from processor.pipeline.mask import iou

    per_type: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    for s in scenes:
        per_type[s.kind].append(iou(masker.compute(s.image).hard, s.truth))
    seconds = (time.perf_counter() - started) / max(1, len(scenes))
    by_type = {kind: sum(v) / len(v) for kind, v in per_type.items()}
    every = [x for v in per_type.values() for x in v]
    worst = min(by_type, key=by_type.__getitem__)
    return SegmenterScore(name, by_type, sum(every) / len(every), worst, seconds, len(every))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.masks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-side", type=int, default=256, help="pixels: each scene's long side (default 256)")
    parser.add_argument("--seeds", type=int, default=1, help="draws per scene type, placement and aspect (default 1)")
    parser.add_argument("--aspects", default="3:4,4:3,1:1",
                        help=f"comma-separated, from {', '.join(ASPECTS)} (default 3:4,4:3,1:1)")
    parser.add_argument("--types", default=",".join(SCENE_TYPES), help="comma-separated scene types (default: all)")
    parser.add_argument("--segmenters", default=",".join(SEGMENTERS),
                        help=f"comma-separated, from {', '.join(SEGMENTERS)} (default: both)")
    parser.add_argument("--onnx", metavar="MODEL", help="also score an ONNX segmenter (local .onnx file)")
    parser.add_argument("--family", default="u2net", choices=["u2net", "isnet", "birefnet"],
                        help="the --onnx model's family (default u2net)")
    parser.add_argument("--composed", type=int, default=2,
                        help="composed photos per room, scored apart (default 2; 0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)

    from processor.config import MaskSettings, OnnxSegmenterSettings

    scenes = list(scene_set(args.long_side, args.seeds, tuple(args.aspects.split(",")), tuple(args.types.split(","))))
    chosen = [name for name in args.segmenters.split(",") if name]
    unknown = sorted(set(chosen) - set(SEGMENTERS))
    if unknown:
        parser.error(f"unknown segmenter(s) {', '.join(unknown)}; choose from {', '.join(SEGMENTERS)}")
    settings = {name: SEGMENTERS[name] for name in chosen}
    if args.onnx:
        settings["onnx"] = MaskSettings(onnx=OnnxSegmenterSettings(model=args.onnx, family=args.family))
    from testkit.photos import COMPOSED_KINDS, composed_photo

    composed = [composed_photo(kind, seed) for seed in range(args.composed) for kind in COMPOSED_KINDS]
    results: dict[str, float] = {"scenes": len(scenes), "long_side": args.long_side, "composed": len(composed)}
    for name, mask_settings in settings.items():
        masker = ready_masker(name, mask_settings)
        results |= score(name, masker, scenes).report()
        if composed:
            results[f"{name}_composed_iou"] = round(score(name, masker, composed).mean, 4)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}  {value}")
    return results


if __name__ == "__main__":
    main()

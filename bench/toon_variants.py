"""The toon style's speed and how far apart its variants are: ``--variants`` variants of one
synthetic ``--size`` photo, timed ``--repeats`` times (median and best seconds), and the mean
absolute difference (0-255 per channel) between every two variants, with each variant's look.

    python -m bench.toon_variants --size 1024x768 --variants 4 --repeats 5

Run it on two commits to compare (``git stash`` or a worktree): the machine's load moves the
seconds, so compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time

import numpy as np
from PIL import Image

from processor.config import ToonStyle
from processor.pipeline.toon import ToonEngine
from testkit.images import photo_bytes

#: Look parameters printed per variant (those an older engine lacks are left out).
LOOK_KEYS = ("colors", "smoothing", "edge_width", "palette", "tones")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the synthetic photo")
    parser.add_argument("--variants", type=int, default=4, help="variants of the toon style")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (after one warm-up)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    photo = Image.open(io.BytesIO(photo_bytes(width, height, seed=3))).convert("RGB")
    engine = ToonEngine("toon", ToonStyle(variants=args.variants, max_side=max(width, height)))
    engine.setup()
    variants = engine(photo)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        engine(photo)
        seconds.append(time.perf_counter() - start)
    pixels = [np.asarray(v.image, dtype=np.float32) for v in variants]
    apart = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(pixels, 2)]
    print(f"{args.variants} variants of a {width}x{height} photo: median {statistics.median(seconds):.3f} s, "
          f"best {min(seconds):.3f} s over {args.repeats} runs")
    if apart:
        print(f"mean absolute difference between two variants: min {min(apart):.1f}, max {max(apart):.1f}")
    for v in variants:
        print(f"  #{v.index}: " + ", ".join(f"{k} {v.parameters[k]}" for k in LOOK_KEYS if k in v.parameters))


if __name__ == "__main__":
    main()

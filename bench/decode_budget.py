"""What the decode budget costs normal photos: each format decoded bare and as shipped, side by
side in one run (``python -m bench.decode_budget``).

For one synthetic photo per format (``--width`` x ``--height``, 4000x3000 = 12 MP by default):

- ``<fmt>_bare_ms``: ``decode_here``, the decoder alone, in this process;
- ``<fmt>_shipped_ms``: ``decode_image`` as the worker calls it: byte check, sniff, the structure
  survey, and the route it picks (``<fmt>_route``: in-process, or isolated in the decoder child
  under its CPU budget);
- ``<fmt>_ratio``: shipped over bare, the overhead of the budget mechanism for that format;
- ``<fmt>_survey_ms``: the structure survey alone (all that an in-process route adds);
- ``<fmt>_isolated_ratio``: what decoding it isolated would cost (``decode_isolated`` over bare),
  for the formats that stay in process: why they do.

Medians over ``--rounds``, the variants interleaved round by round so that load on the machine
hits them alike. The child is started before timing (``child_start_s``: its one-off start).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.common import machine, report

#: Formats measured, and the options they are saved with (photos as cameras and phones write them).
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "jpeg": ("JPEG", {"quality": 90}),
    "jpeg_progressive": ("JPEG", {"quality": 90, "progressive": True}),
    "png": ("PNG", {"compress_level": 6}),
    "webp": ("WEBP", {"quality": 90}),
    "heic": ("HEIF", {"quality": 90}),
    "avif": ("AVIF", {"quality": 80}),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_budget", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4000, help="photo width in pixels (default 4000)")
    parser.add_argument("--height", type=int, default=3000, help="photo height in pixels (default 3000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from processor.config import DecodeSettings
    from processor.pipeline.decode import (
        DecodeRoute,
        decode_here,
        decode_image,
        decode_isolated,
        sniff_format,
        survey,
    )
    from testkit.images import HEIF_ENCODER, encode, photo_image

    limits = DecodeSettings()
    photo = photo_image(args.width, args.height, seed=3)
    results: dict[str, Any] = {**machine(), "megapixels": round(args.width * args.height / 1e6, 2)}
    started = time.perf_counter()
    decode_isolated(encode(photo_image(96, 72), "GIF"), "GIF", limits)  # starts the decoder child
    results["child_start_s"] = round(time.perf_counter() - started, 3)

    for name, (fmt, options) in FORMATS.items():
        if fmt == "HEIF" and not HEIF_ENCODER:
            continue
        data = encode(photo, fmt, **options)
        sniffed = sniff_format(data[:512]) or fmt
        route = survey(data, sniffed).route
        variants: dict[str, Callable[[], object]] = {
            "bare": lambda data=data, sniffed=sniffed: decode_here(data, sniffed, limits),
            "shipped": lambda data=data: decode_image(data, limits),
        }
        if route is DecodeRoute.IN_PROCESS:
            variants["isolated"] = lambda data=data, sniffed=sniffed: decode_isolated(data, sniffed, limits)
        variants["survey"] = lambda data=data, sniffed=sniffed: survey(data, sniffed)
        timings = _interleaved(variants, args.rounds)
        bare = timings["bare"]
        results[f"{name}_route"] = route.value
        results[f"{name}_bytes"] = len(data)
        results[f"{name}_bare_ms"] = round(bare * 1000, 1)
        results[f"{name}_shipped_ms"] = round(timings["shipped"] * 1000, 1)
        results[f"{name}_ratio"] = round(timings["shipped"] / bare, 3)
        results[f"{name}_survey_ms"] = round(timings["survey"] * 1000, 3)
        if "isolated" in timings:
            results[f"{name}_isolated_ratio"] = round(timings["isolated"] / bare, 3)
    report(results, as_json=args.json)
    return results


def _interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall seconds of each variant; one warm-up call each, then ``rounds`` rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():
        call()
    for _ in range(rounds):
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


if __name__ == "__main__":
    main()

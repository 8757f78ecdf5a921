"""Does the compute stage ever wait for the network? The worker against a naive loop, same work.

A fixed-cost stage (``FixedCostEngine``: it sleeps until N ms have passed since the item started,
as a GPU kernel of fixed length would, whatever else the CPU is doing) stands in for the GPU.
Two buckets on one real SeaweedFS get the same inputs; then

- the processor (``Worker.run_once``: fetch thread, compute, upload thread, bounded queues,
  claims) drains the first bucket, and
- a naive loop (GET, decode, compute, encode, PUT, one item after another, no claims, no done
  markers: less store work than the processor) drains the second.

For each, ``ratio`` = end-to-end throughput / the stage's own throughput = the seconds the stage
was busy / wall seconds. 1.0 means the stage never waited. The issue's goal: at least 0.9 for the
processor at 200 ms per item. Resident memory is sampled during the processor's run: ``growth``
near zero means the bounded queues keep memory flat however many inputs there are.

``--stage sd`` replaces the fixed-cost stage with the real one: the shipped ``modern-disney``
img2img style (``config.yaml``: rounds, steps, scheduler, variants) on a local SD 1.x folder
(``--model``; default the SD 1.5 architecture with random weights, built as in
``bench.gpu_img2img``), its busy time summed around each engine call. ``--store local`` uses the
local directory store instead of SeaweedFS (a machine without the ``weed`` binary): the fetch and
upload stages are then decode, encode and file writes, not the network.

    python -m bench.overlap --items 300 --stage-ms 200 --size 1024
    python -m bench.overlap --stage sd --store local --items 8 --size 1024   # a CUDA machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from bench.common import MIB, RssSampler, machine, peak_rss_bytes, report, s3_store, seaweedfs_server
from processor import __version__
from processor.cli.compose import make_engine
from processor.config import Settings, StyleBase
from processor.manifest import Manifest, Source, WorkerInfo
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.decode import decode_image
from processor.pipeline.outputs import encode_outputs
from processor.pipeline.render import EngineRegistry, render
from processor.queue.keys import KeyLayout
from processor.worker.runner import Worker

#: Defaults: the issue's goal is stated at 200 ms per item.
DEFAULT_ITEMS = 300
DEFAULT_STAGE_MS = 200.0
#: Pixels: the long side of each input photo (a phone photo is ~4000; 1024 keeps uploads quick).
DEFAULT_SIZE = 1024
#: Pixels: the long side of each variant the stage returns (SD 1.5's working size).
DEFAULT_VARIANT_SIDE = 512
DEFAULT_VARIANTS = 4
#: Distinct photos generated; inputs cycle through them (decoding cost does not depend on content).
DISTINCT_PHOTOS = 8
#: Threads that upload the inputs before the measurement.
SETUP_THREADS = 8
STYLE = "fixed"
#: The shipped style ``--stage sd`` runs (its model replaced by ``--model``).
SD_STYLE = "modern-disney"
#: ``--stage sd --tiny``: working size and steps small enough for the CPU.
TINY_SD_SIZE, TINY_SD_STEPS = 64, 5


class FixedCostStyle(StyleBase):
    """A style whose engine takes ``ms`` per item, like a GPU stage of fixed cost (a ``StyleBase``:
    it answers what it loads, nothing)."""

    engine: Literal["fixed-cost"] = "fixed-cost"
    ms: float = Field(gt=0)
    variants: int = Field(default=DEFAULT_VARIANTS, ge=1)
    #: Pixels: the long side of the variants (copies of the input, resized).
    variant_side: int = Field(default=DEFAULT_VARIANT_SIDE, ge=8)


class FixedCostEngine:
    """Returns ``variants`` resized copies of the input, taking ``style.ms`` per call in all
    (the resize included). ``busy_s`` sums the time spent inside calls: the stage's own cost."""

    engine = "fixed-cost"

    def __init__(self, style_name: str, style: FixedCostStyle) -> None:
        self.style_name = style_name
        self.style = style
        self.busy_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def setup(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "style": self.style_name, "ms": self.style.ms}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        started = time.perf_counter()
        small = image.copy()
        small.thumbnail((self.style.variant_side, self.style.variant_side))
        out = [
            VariantImage(style=self.style_name, engine=self.engine, index=i, seed=i, image=small,
                         parameters={"ms": self.style.ms})
            for i in range(self.style.variants)
        ]
        remaining = started + self.style.ms / 1000.0 - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        with self._lock:
            self.busy_s += time.perf_counter() - started
            self.calls += 1
        return out


def registry_with_fixed_cost(settings: Settings, style: FixedCostStyle) -> tuple[EngineRegistry, list[FixedCostEngine]]:
    """The worker's registry with the fixed-cost style added; the factory falls back to the real
    engines (``processor.cli.compose.make_engine``) for every other style."""
    made: list[FixedCostEngine] = []

    def factory(name: str, configured: Any) -> Any:
        if isinstance(configured, FixedCostStyle):
            engine = FixedCostEngine(name, configured)
            made.append(engine)
            return engine
        return make_engine(name, configured)

    return EngineRegistry({**settings.styles, STYLE: style}, factory), made


class TimedEngine:
    """A real engine with the seconds spent inside its calls summed in ``busy_s`` (the engine
    returns PIL images, so the GPU work of a call has finished when it returns)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.busy_s = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        started = time.perf_counter()
        try:
            return self.inner(image, context)
        finally:
            self.busy_s += time.perf_counter() - started
            self.calls += 1


def registry_with_timed_engines(settings: Settings) -> tuple[EngineRegistry, list[TimedEngine]]:
    """The worker's own registry (``processor.cli.compose.build_registry``), every engine it makes timed."""
    from processor.cli.compose import build_registry

    base = build_registry(settings)
    made: list[TimedEngine] = []

    def factory(name: str, configured: Any) -> Any:
        engine = TimedEngine(base.factory(name, configured))
        made.append(engine)
        return engine

    return EngineRegistry(settings.styles, factory), made


def sd_settings(args: argparse.Namespace, model: str, run: dict[str, Any]) -> Settings:
    """The shipped ``modern-disney`` style on ``model``, captions off (``--stage sd``)."""
    import yaml

    style = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))["styles"][SD_STYLE]
    style["model"] = model
    if args.tiny:
        style |= {"size": TINY_SD_SIZE, "steps": TINY_SD_STEPS}
    return Settings(run=run | {"styles": [SD_STYLE]}, styles={SD_STYLE: style}, caption={"mode": "none"},
                    models={"device": args.device, "offline": True})


def sd_model(args: argparse.Namespace, into: Any) -> str:
    """``--model``, else a freshly built random-weight model (tiny with ``--tiny``)."""
    if args.model:
        return args.model
    if args.tiny:
        from testkit.models.sd import build_sd

        return str(build_sd(Path(into) / "tiny-sd"))
    from bench.gpu_img2img import build_sd15
    from processor.config import ModelSettings
    from processor.models.loader import ModelLoader

    return str(build_sd15(Path(into) / "sd15-random", ModelLoader(ModelSettings(device=args.device)).device()))


def photos(count: int, size: int) -> list[bytes]:
    from testkit.images import photo_bytes

    return [photo_bytes(size, size * 3 // 4, seed=i) for i in range(count)]


def upload_inputs(store: Any, items: int, bodies: list[bytes]) -> None:
    def put(i: int) -> None:
        store.put(f"inputs/batch/toy-{i:05d}.jpg", bodies[i % len(bodies)], content_type="image/jpeg")

    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        list(pool.map(put, range(items)))


def make_registry(settings: Settings, style: FixedCostStyle | None) -> tuple[EngineRegistry, list[Any], str]:
    """The registry, its (timed) engines and the style to run: the fixed-cost stage, or with
    ``style`` None the real engines of ``settings`` (``--stage sd``)."""
    if style is None:
        return (*registry_with_timed_engines(settings), settings.run.styles[0])
    return (*registry_with_fixed_cost(settings, style), STYLE)


def run_processor(store: Any, settings: Settings, style: FixedCostStyle | None) -> dict[str, Any]:
    registry, engines, name = make_registry(settings, style)
    worker = Worker(store, settings, registry, worker_id="bench-overlap", styles=[name])
    worker.setup()
    before = store.request_count()
    with RssSampler() as rss:
        started = time.perf_counter()
        code = worker.run_once()
        wall = time.perf_counter() - started
    if code != 0 or worker.totals["done"] == 0:
        raise RuntimeError(f"the worker did not finish its inputs (exit {code}, outcomes {dict(worker.totals)})")
    busy = sum(e.busy_s for e in engines)
    requests = store.request_count() - before
    return {"items": worker.totals["done"], "wall_s": wall, "stage_busy_s": busy, "requests": requests,
            "rss": rss, **stage_medians(store, settings)}


def stage_medians(store: Any, settings: Settings) -> dict[str, float]:
    """Median seconds per item of the fetch stage (download + decode) and of the upload stage
    (encode + upload), from the manifests' timings: whichever exceeds the compute stage's cost
    is the bottleneck the ratio reveals."""
    fetch, upload = [], []
    for obj in store.list(settings.prefixes.outputs):
        if obj.key.endswith("/manifest.json"):
            t = Manifest.model_validate_json(store.get(obj.key).body).timings
            fetch.append(t.get("download", 0.0) + t.get("decode", 0.0))
            upload.append(t.get("encode", 0.0) + t.get("upload", 0.0))
    return {"fetch_median_s": statistics.median(fetch), "upload_median_s": statistics.median(upload)}


def run_naive(store: Any, settings: Settings, style: FixedCostStyle | None) -> dict[str, Any]:
    """GET, decode, compute, encode, PUT: one item after another, as a first script would."""
    registry, engines, name = make_registry(settings, style)
    registry.setup([name])
    layout = KeyLayout(settings.prefixes)
    info = WorkerInfo(id="bench-naive", version=__version__, device="cpu")
    before = store.request_count()
    started = time.perf_counter()
    done = 0
    for obj in list(store.list(settings.prefixes.inputs)):
        keys = layout.for_input(obj.key)
        got = store.get(obj.key)
        decoded = decode_image(got.body, settings.pipeline.decode, name=obj.key)
        variants, timings = render(decoded.image, [name], registry)
        files, entries, sheet = encode_outputs(decoded.image, variants, output_prefix=keys.output_prefix,
                                               sheet_height=settings.pipeline.contact_sheet_height,
                                               png_compress_level=settings.pipeline.png_compress_level)
        for f in files:
            store.put(keys.output_prefix + f.name, f.body, content_type=f.content_type)
        manifest = Manifest(source=Source(key=obj.key, etag=got.info.etag, size=got.info.size), variants=entries,
                            contact_sheet=keys.output_prefix + sheet if sheet else None, timings=timings, worker=info)
        store.put(keys.manifest, manifest.to_json_bytes(), content_type="application/json")
        done += 1
    wall = time.perf_counter() - started
    return {"items": done, "wall_s": wall, "stage_busy_s": sum(e.busy_s for e in engines),
            "requests": store.request_count() - before}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overlap",
        description="Throughput of the worker (fetch / compute / upload overlapped, bounded queues) against a "
        "naive download-compute-upload loop, on the same inputs in a real SeaweedFS, with a compute stage of "
        "fixed cost standing in for the GPU. Prints, for each, end-to-end throughput divided by the stage's own "
        "throughput (1.0: the stage never waited; the goal is >= 0.9 at 200 ms per item), and the worker's "
        "resident memory (start, peak, growth from the first half of the run to the second).",
    )
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help=f"inputs per bucket (default {DEFAULT_ITEMS})")
    parser.add_argument("--stage-ms", type=float, default=DEFAULT_STAGE_MS,
                        help=f"milliseconds the stage takes per item (default {DEFAULT_STAGE_MS:g})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"long side of each input JPEG in pixels (default {DEFAULT_SIZE})")
    parser.add_argument("--variants", type=int, default=DEFAULT_VARIANTS,
                        help=f"PNG variants uploaded per item (default {DEFAULT_VARIANTS})")
    parser.add_argument("--variant-side", type=int, default=DEFAULT_VARIANT_SIDE,
                        help=f"long side of each variant in pixels (default {DEFAULT_VARIANT_SIDE})")
    parser.add_argument("--prefetch", type=int, default=None, help="run.prefetch (default: the config default)")
    parser.add_argument("--upload-queue", type=int, default=None, help="run.upload_queue (default: the config default)")
    parser.add_argument("--skip-naive", action="store_true", help="measure the processor only")
    parser.add_argument("--stage", choices=["fixed", "sd"], default="fixed",
                        help="fixed: the fixed-cost stage of --stage-ms (default); sd: the shipped modern-disney "
                        "img2img style on --model, the real GPU stage (--stage-ms and --variants* are then unused)")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="--stage sd: a local diffusers SD 1.x folder (default: build the SD 1.5 architecture "
                        "with random weights; with --tiny the tiny test model)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"--stage sd: {TINY_SD_SIZE} px and {TINY_SD_STEPS} steps per round (the CPU rehearsal)")
    parser.add_argument("--device", default="auto", help="--stage sd: models.device (auto, cpu, cuda)")
    parser.add_argument(
        "--config", default="config.yaml", help="--stage sd: the config holding the modern-disney style"
    )
    parser.add_argument("--store", choices=["s3", "local"], default="s3",
                        help="s3: two buckets on a real SeaweedFS (default); local: two local directory stores "
                        "(no network: fetch and upload are decode, encode and file writes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser


@contextmanager
def two_stores(kind: str, server: Any) -> Iterator[tuple[Any, Any]]:
    """The worker's store and the naive loop's, on one SeaweedFS or in a temporary folder."""
    if kind == "local":
        from processor.store.local import LocalStore

        with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
            yield LocalStore(Path(tmp) / "worker"), LocalStore(Path(tmp) / "naive")
        return
    with seaweedfs_server(server) as s3:
        yield s3_store(s3), s3_store(s3)


def main(argv: Sequence[str] | None = None, *, server: Any = None) -> dict[str, Any]:
    """Run the benchmark; ``server`` reuses a running SeaweedFS (tests), else one is started."""
    args = build_parser().parse_args(argv)
    if args.items < 1 or args.stage_ms <= 0 or args.size < 64:
        raise SystemExit("--items must be >= 1, --stage-ms > 0 and --size >= 64 (the decoder's minimum side)")
    run: dict[str, Any] = {"styles": ["toon"]}
    if args.prefetch is not None:
        run["prefetch"] = args.prefetch
    if args.upload_queue is not None:
        run["upload_queue"] = args.upload_queue
    bodies = photos(min(DISTINCT_PHOTOS, args.items), args.size)
    with two_stores(args.store, server) as (worker_store, naive_store), \
            tempfile.TemporaryDirectory(prefix="bench-overlap-model-") as model_dir:
        if args.stage == "sd":
            settings, style = sd_settings(args, sd_model(args, model_dir), run), None
        else:
            settings = Settings(run=run)
            style = FixedCostStyle(ms=args.stage_ms, variants=args.variants, variant_side=args.variant_side)
        upload_inputs(worker_store, args.items, bodies)
        if not args.skip_naive:
            upload_inputs(naive_store, args.items, bodies)
        proc = run_processor(worker_store, settings, style)
        naive = None if args.skip_naive else run_naive(naive_store, settings, style)

    rss = proc["rss"]
    if style is None:  # the real stage: its cost per item is measured, not set
        shipped = settings.styles[SD_STYLE]
        stage = {"stage": f"sd ({SD_STYLE}: {shipped.steps} steps, {shipped.variants} variants, {args.device})",
                 "stage_ms": proc["stage_busy_s"] / proc["items"] * 1000, "variants": shipped.variants}
    else:
        stage = {"stage": "fixed", "stage_ms": args.stage_ms, "variants": args.variants}
    results: dict[str, Any] = {
        "items": args.items,
        **stage,
        "store": args.store,
        "input_size": f"{args.size}x{args.size * 3 // 4}",
        "prefetch": settings.run.prefetch,
        "upload_queue": settings.run.upload_queue,
        "processor_items_per_s": proc["items"] / proc["wall_s"],
        "processor_stage_items_per_s": proc["items"] / proc["stage_busy_s"],
        "processor_ratio": proc["stage_busy_s"] / proc["wall_s"],
        "processor_wall_s": proc["wall_s"],
        "processor_requests": proc["requests"],
        "processor_fetch_ms_median": proc["fetch_median_s"] * 1000,
        "processor_upload_ms_median": proc["upload_median_s"] * 1000,
        "processor_rss_start_mib": rss.start / MIB,
        "processor_rss_peak_mib": rss.peak / MIB,
        "processor_rss_growth_mib": rss.growth / MIB,
    }
    if naive is not None:
        results |= {
            "naive_items_per_s": naive["items"] / naive["wall_s"],
            "naive_stage_items_per_s": naive["items"] / naive["stage_busy_s"],
            "naive_ratio": naive["stage_busy_s"] / naive["wall_s"],
            "naive_wall_s": naive["wall_s"],
            "naive_requests": naive["requests"],
            "speedup_processor_over_naive": naive["wall_s"] / proc["wall_s"],
        }
    results |= {"process_peak_rss_mib": peak_rss_bytes() / MIB, **machine()}
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

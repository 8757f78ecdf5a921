"""``processor run`` (the worker over the bucket) and ``processor process`` (the same pipeline on
local files, no bucket)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from processor import __version__
from processor.cli.compose import (
    StoreUse,
    build_captioner,
    build_compute_pool,
    build_registry,
    build_store,
    detect_device,
    needs_torch,
    worker_id,
)
from processor.cli.console import Where
from processor.cli.extras import Extra, require
from processor.config import Settings
from processor.errors import EXIT_INCOMPLETE, EXIT_SOME_FAILED, EXIT_UNHEALTHY, ConfigError, ItemError
from processor.localfiles import walk
from processor.manifest import FailureRecord, Manifest, Source, WorkerInfo
from processor.queue.keys import SIDECAR_SUFFIX, KeyLayout, is_sidecar, split_extension
from processor.tracing import build_tracer
from processor.worker.daemon import run_daemon

log = logging.getLogger("processor.cli")
#: The service name of the worker's spans (``OTEL_SERVICE_NAME`` overrides it).
TRACING_SERVICE = "toy-cartoonizer-worker"


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.claims import probe_conditional_create
    from processor.queue.hints import build_hint_sources
    from processor.worker.metrics import MetricsEndpoint
    from processor.worker.runner import Worker

    if getattr(args, "metrics_port", None) is not None:
        metrics_settings = settings.metrics.model_copy(update={"port": args.metrics_port})
        settings = settings.model_copy(update={"metrics": metrics_settings})
    styles = _chosen_styles(args, settings)
    _require_model_extra(args, settings, styles)
    if args.once:
        _check_store_answers(settings)
    store = build_store(settings)
    run = settings.run
    if run.shard_index is None and os.environ.get("JOB_COMPLETION_INDEX"):
        run = run.model_copy(update={"shard_index": int(os.environ["JOB_COMPLETION_INDEX"])})
        settings = settings.model_copy(update={"run": run})
    use_claims = run.coordination == "claims"
    if run.coordination == "auto":
        atomic, detail = probe_conditional_create(store, settings.prefixes.state)
        use_claims = atomic
        log.info("coordination", extra={"mode": "claims" if atomic else "shards", "probe": detail})
    if not use_claims and run.shard_index is not None and run.shard_index >= run.shard_count:
        raise ConfigError(
            f"shard index {run.shard_index} (JOB_COMPLETION_INDEX) is not below run.shard_count {run.shard_count}: "
            "set PROCESSOR_RUN__SHARD_COUNT to the Job's completions, or no worker takes the missing shards"
        )
    # Serving starts before setup: /healthz answers (and /readyz says 503) while models load.
    metrics = MetricsEndpoint(settings.metrics)
    tracer = build_tracer(settings.tracing, TRACING_SERVICE)
    worker = Worker(store, settings, build_registry(settings), worker_id=worker_id(settings), styles=styles,
                    device=detect_device(settings, styles), use_claims=use_claims, observer=metrics.observer,
                    captioner=build_captioner(settings, store), hints=build_hint_sources(settings, store),
                    compute_pool=build_compute_pool(settings, styles), tracer=tracer, announce=True)
    metrics.observer.watch(store=store, claims=worker.claims, info=worker.info.model_dump())
    _install_signal_handlers(worker)
    log.info("worker_start", extra={"worker": worker.info.id, "store": store.description, "styles": styles,
                                    "once": args.once, "coordination": "claims" if use_claims else "shards",
                                    "metrics_port": metrics.port, "compute_slots": worker.compute_slots,
                                    "hints": [h.name for h in worker.hint_sources]})
    try:
        worker.setup()
        code = worker.run_once() if args.once else run_daemon(worker)
    finally:
        worker.close()
        metrics.close()
        store.close()
        tracer.close()
    log.info("worker_stop", extra={str(o): n for o, n in worker.totals.items()} | {"exit_code": code})
    return code


def _check_store_answers(settings: Settings) -> None:
    """``run --once`` is a command someone waits for: a store that does not answer at all ends it
    within ``store.command_timeout_s`` (exit 8). Once it has answered, the worker's own store gets
    the full retries (``store.max_attempts``), so a blip in a long run does not cost its items."""
    from processor.queue.protocol import BucketQueue

    with build_store(settings, StoreUse.WRITE) as probe:
        BucketQueue(probe, KeyLayout(settings.prefixes)).ping()


def _require_model_extra(args: argparse.Namespace, settings: Settings, styles: list[str]) -> None:
    """One line naming the ``sd`` extra, before anything loads, when the styles need PyTorch and it
    is not installed."""
    from processor.config import background_model

    if not needs_torch(settings, styles):
        return
    diffusion = [s for s in styles if settings.styles[s].engine != "toon" or background_model(settings.styles[s])]
    source = "--style" if args.style else "run.styles"
    require(Extra.SD, f"{source} {', '.join(diffusion)}" if diffusion else
            "the caption stage or the CLIP score (caption.mode, pipeline.clip_score)")


def _chosen_styles(args: argparse.Namespace, settings: Settings) -> list[str]:
    """``--style`` (else ``run.styles``), checked like ``run.styles``: defined, each once, within the
    per-input caps."""
    from processor.config import work_bound_problem

    if not args.style:
        return list(settings.run.styles)
    unknown = [s for s in args.style if s not in settings.styles]
    if unknown:
        defined = ", ".join(sorted(settings.styles))
        raise ConfigError(f"--style {unknown}: not defined under styles (defined: {defined})")
    problem = work_bound_problem(args.style, settings.styles, settings.run)
    if problem:
        raise ConfigError(f"--style: the styles given {problem}")
    if not settings.run.allow_noncommercial:
        from processor.config.licenses import noncommercial_problem

        problem = noncommercial_problem(args.style, settings.styles)
        if problem:
            raise ConfigError(f"--style: the styles given {problem}")
    return list(args.style)


def _install_signal_handlers(worker: Any) -> None:
    """First SIGTERM/SIGINT: finish the current item, release queued claims, exit 0.
    A second one: stop at once (claims expire by their TTL)."""
    received = {"count": 0}

    def handle(signum: int, _frame: Any) -> None:
        received["count"] += 1
        if received["count"] > 1:
            os._exit(128 + signum)
        log.info("shutdown_requested", extra={"signal": signal.Signals(signum).name})
        worker.request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from processor.pipeline.item import ItemPipeline

    styles = _chosen_styles(args, settings)
    _require_model_extra(args, settings, styles)
    out = Path(args.out)
    # The nearest existing ancestor (itself, if it exists) must be a folder; else every write fails.
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"is inside {existing}, which is a file"
        raise ConfigError(f"--out {out} {where}; name a folder (it is created if missing)")
    pipeline = ItemPipeline(settings, build_registry(settings), styles=styles, captioner=build_captioner(settings))
    pipeline.setup()
    # A photo.json beside photo.jpg is its sidecar, as in the bucket (inputs/<path>.json).
    found = sorted(walk(args.paths))
    sidecars = {rel: path for path, rel in found if is_sidecar(rel)}
    files = [(path, rel) for path, rel in found if not is_sidecar(rel)]
    if not files:
        raise ConfigError(f"no files found under {', '.join(args.paths)}")
    info = WorkerInfo(id=worker_id(settings), version=__version__, device=detect_device(settings, styles))
    failed = 0
    for path, rel in tqdm(files, desc="processing", unit="img", disable=args.quiet):
        target = out / Path(rel).with_suffix("")
        data = path.read_bytes()
        source = Source(key=str(path), etag=hashlib.md5(data).hexdigest(), size=len(data))
        sidecar_path = sidecars.get(split_extension(rel)[0] + SIDECAR_SUFFIX)
        timings: dict[str, float] = {}
        try:
            sidecar = sidecar_path.read_bytes() if sidecar_path else None
            prepared, rendered, encoded = pipeline(data, name=str(path), sidecar=sidecar,
                                                   sidecar_name=str(sidecar_path or ""), timings=timings)
        except ItemError as exc:
            failed += 1
            record = FailureRecord(source=source, error=type(exc).__name__, message=str(exc), hint=exc.hint,
                                   worker=info)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_name(target.name + ".failed.json").write_bytes(record.to_json_bytes())
            tqdm.write(f"FAILED {rel}: {exc}  -> {exc.hint}", file=sys.stderr)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for f in encoded.files:
            (target / f.name).write_bytes(f.body)
        decoded = prepared.decoded
        source = source.model_copy(update={"width": decoded.image.width, "height": decoded.image.height,
                                           "format": decoded.format, "notes": decoded.notes,
                                           "color_profile": decoded.color_profile})
        manifest = Manifest(source=source, variants=encoded.variants, contact_sheet=encoded.contact_sheet,
                            timings=timings, worker=info, caption=rendered.caption)
        (target / "manifest.json").write_bytes(manifest.to_json_bytes())
    done = len(files) - failed
    print(f"{done} processed, {failed} failed -> {out}")
    return EXIT_SOME_FAILED if failed else 0



def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535; 0 turns metrics off)")
    return port



def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``run`` and ``process`` (``common``: --config, --log-level, --quiet)."""
    p = sub.add_parser("run", parents=[common], help="run the worker over the bucket",
                       description="Process every input under inputs/ that has no result yet. With --once, drain "
                       "the inputs and exit (0 when every input has a manifest or a failure record, "
                       f"{EXIT_INCOMPLETE} when store errors left some without one, 3/4 for bad config/credentials, "
                       f"{EXIT_UNHEALTHY} when run.max_consecutive_failures items in a row crashed a pipeline stage: "
                       "the worker stops as unhealthy and a restarted one retries them); "
                       "without it, poll as a daemon until SIGTERM. While it runs, Prometheus metrics and the "
                       "/healthz and /readyz probes are served on metrics.port (default 9108; 0 turns them off).")
    p.add_argument("--once", action="store_true", help="drain the inputs, then exit")
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve /metrics, /healthz, /readyz on PORT (0: off); overrides metrics.port (default 9108)")
    p.add_argument("--style", action="append", metavar="NAME", help="style to apply (repeatable); overrides run.styles")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("process", parents=[common], help="run the pipeline on local files, no bucket",
                       description="Apply the styles to local photos and write each one's variants, contact sheet "
                       "and manifest.json to OUT/<name>/. A photo.json next to photo.jpg is its sidecar, as in the "
                       "bucket. The quickest way to try a style.")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="photos, and folders searched recursively")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--style", action="append", metavar="NAME", help="style to apply (repeatable); overrides run.styles")
    p.set_defaults(func=cmd_process, where=Where.CONFIG)

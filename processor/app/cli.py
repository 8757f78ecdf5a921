"""Command line: every ``processor`` command (the parts they run are built in ``compose``).

``processor run``      the worker (``--once`` drains the bucket; otherwise a daemon)
``processor process``  the same pipeline on local files, no bucket
``processor submit``   upload photos to ``inputs/``
``processor status``   counts and the latest failures
``processor results``  download one input's outputs
``processor retry``    requeue failed inputs (after a bad deploy, a broken GPU, a raised limit)
``processor doctor``   check config, store, credentials, conditional writes, device, models
``processor schema``   print the manifest / failure-record JSON Schemas
``processor models pull``  download the configured diffusion models into the cache
``processor serve``    the HTTP API over the bucket (``processor.api``)
``processor finetune`` train a LoRA on your images that a style can use (processor/finetune/)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from processor import __version__
from processor.app.compose import (  # noqa: F401 - build_captioner, make_engine, needs_torch: used by callers of cli
    build_captioner,
    build_compute_pool,
    build_registry,
    build_store,
    detect_device,
    make_engine,
    needs_torch,
    worker_id,
)
from processor.config import Settings, load_settings
from processor.errors import (
    EXIT_DOCTOR,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    EXIT_UNHEALTHY,
    ConfigError,
    FatalError,
    ItemError,
    ObjectNotFound,
    ProcessorError,
    StoreAccessError,
    StoreError,
)
from processor.localfiles import walk
from processor.log import configure_logging
from processor.manifest import (
    FailureRecord,
    Manifest,
    Source,
    WorkerInfo,
    json_schemas,
)
from processor.queue.keys import SIDECAR_SUFFIX, KeyLayout, is_sidecar, safe_segment, split_extension
from processor.redact import redact
from processor.store.base import ObjectStore

log = logging.getLogger("processor.cli")

#: Failures ``status`` shows.
RECENT_FAILURES = 5


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.claims import probe_conditional_create
    from processor.queue.hints import build_hint_sources
    from processor.worker.metrics import MetricsEndpoint
    from processor.worker.runner import Worker

    if getattr(args, "metrics_port", None) is not None:
        metrics_settings = settings.metrics.model_copy(update={"port": args.metrics_port})
        settings = settings.model_copy(update={"metrics": metrics_settings})
    store = build_store(settings)
    styles = _chosen_styles(args, settings)
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
    worker = Worker(store, settings, build_registry(settings), worker_id=worker_id(settings), styles=styles,
                    device=detect_device(settings, styles), use_claims=use_claims, observer=metrics.observer,
                    captioner=build_captioner(settings, store), hints=build_hint_sources(settings, store),
                    compute_pool=build_compute_pool(settings, styles))
    metrics.observer.watch(store=store, claims=worker.claims, info=worker.info.model_dump())
    _install_signal_handlers(worker)
    log.info("worker_start", extra={"worker": worker.info.id, "store": store.description, "styles": styles,
                                    "once": args.once, "coordination": "claims" if use_claims else "shards",
                                    "metrics_port": metrics.port, "compute_slots": worker.compute_slots,
                                    "hints": [h.name for h in worker.hint_sources]})
    try:
        worker.setup()
        code = worker.run_once() if args.once else worker.run_forever()
    finally:
        worker.close()
        metrics.close()
        store.close()
    log.info("worker_stop", extra={str(o): n for o, n in worker.totals.items()} | {"exit_code": code})
    return code


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
                                           "format": decoded.format, "notes": decoded.notes})
        manifest = Manifest(source=source, variants=encoded.variants, contact_sheet=encoded.contact_sheet,
                            timings=timings, worker=info, caption=rendered.caption)
        (target / "manifest.json").write_bytes(manifest.to_json_bytes())
    done = len(files) - failed
    print(f"{done} processed, {failed} failed -> {out}")
    return EXIT_SOME_FAILED if failed else 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    store = build_store(settings)
    prefix = settings.prefixes.inputs + (args.prefix.strip("/") + "/" if args.prefix else "")
    files = sorted(walk(args.paths))
    if not files:
        raise ConfigError(f"no files found under {', '.join(args.paths)}")
    prompt = _metadata_prompt(args.prompt, settings) if args.prompt else None
    photo_metadata = {"prompt": prompt} if prompt else {}
    if args.style_image:
        from processor.pipeline.look import STYLE_IMAGE_METADATA_KEY

        photo_metadata[STYLE_IMAGE_METADATA_KEY] = _upload_style_image(Path(args.style_image), store, settings)
    for path, rel in tqdm(files, desc="uploading", unit="file", disable=args.quiet):
        ctype = "application/json" if is_sidecar(rel) else "application/octet-stream"
        metadata = dict(photo_metadata) if photo_metadata and not is_sidecar(rel) else None
        store.put(prefix + rel, path.read_bytes(), content_type=ctype, metadata=metadata)
    print(f"uploaded {len(files)} file(s) to {store.description} under {prefix}")
    _request_rescan(store, settings, by="submit", count=len(files))
    return 0


def _upload_style_image(path: Path, store: ObjectStore, settings: Settings) -> str:
    """``--style-image``: the picture checked as the worker will decode it, uploaded under
    ``prefixes.styles`` by its content (the same picture twice is one object); its key."""
    from processor.pipeline.decode import decode_image
    from processor.queue.submit import CONTENT_TYPES, EXTENSIONS

    if not any(getattr(style, "ip_adapter", None) is not None for style in settings.styles.values()):
        raise ConfigError("--style-image: no configured style has an ip_adapter to read it; drop --style-image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--style-image {path}: {exc.strerror or exc}") from None
    try:
        decoded = decode_image(data, settings.pipeline.decode, name=f"--style-image {path}")
    except ItemError as exc:
        raise ConfigError(f"{exc} ({exc.hint})") from None
    if decoded.format not in EXTENSIONS:
        raise ConfigError(f"--style-image {path} is {decoded.format}; send a JPEG, PNG or WebP picture")
    key = f"{settings.prefixes.styles}submit/{hashlib.sha256(data).hexdigest()[:32]}{EXTENSIONS[decoded.format]}"
    store.put(key, data, content_type=CONTENT_TYPES[decoded.format])
    return key


def _metadata_prompt(text: str, settings: Settings) -> str:
    """``--prompt`` checked as the worker will check it, encoded so every store takes it (S3
    metadata is ASCII: non-ASCII text travels RFC 2047-encoded and the worker decodes it)."""
    from processor.pipeline.sidecar import MAX_METADATA_BYTES, encode_metadata, validate_overrides

    try:
        validate_overrides({"prompt": text}, settings, where="--prompt")
    except ItemError as exc:
        raise ConfigError(str(exc)) from None
    encoded = encode_metadata(text)
    if len(encoded) + len("prompt") > MAX_METADATA_BYTES:
        raise ConfigError(f"--prompt is {len(encoded):,} bytes as object metadata; S3 keeps at most "
                          f"{MAX_METADATA_BYTES:,}: shorten it, or put it in a sidecar photo.json "
                          '({"prompt": "..."}) next to the photo')
    return encoded


def _request_rescan(store: ObjectStore, settings: Settings, *, by: str, count: int) -> None:
    """Ask running daemons for a full scan now: what ``by`` wrote may sort before their mark."""
    from processor.queue.rescan import request_rescan

    layout = KeyLayout(settings.prefixes)
    if not request_rescan(store, layout, by=by, count=count):
        print(f"could not write the rescan hint ({layout.rescan_hint}); running daemons "
              "will find these inputs at their next full scan (run.full_rescan_s)", file=sys.stderr)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.protocol import BucketQueue

    store = build_store(settings)
    status = BucketQueue(store, KeyLayout(settings.prefixes)).status(recent=RECENT_FAILURES)
    counts = {
        "inputs": status.inputs,
        "pending": status.pending,
        "in_progress": status.in_progress,
        "done": status.done,
        "failed": status.failed,
    }
    recent = [{"input": r.source.key, "error": r.error, "message": r.message, "hint": r.hint,
               "at": r.created_at.isoformat(), "attempts": r.attempts, "final": r.final}
              for r in (f.record for f in status.recent_failures)]
    if args.json:
        print(json.dumps({"store": store.description, **counts, "recent_failures": recent}, indent=2))
        return 0
    print(f"store: {store.description}")
    for name, value in counts.items():
        print(f"  {name:12} {value}")
    if recent:
        print("recent failures:")
        for r in recent:
            retry = "" if r["final"] else f" (attempt {r['attempts']} failed; will be retried)"
            print(f"  {r['input']}: {r['error']}{retry}: {r['message']}\n      -> {r['hint']}")
    return 0


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.protocol import BucketQueue

    store = build_store(settings)
    layout = KeyLayout(settings.prefixes)
    key = args.key if args.key.startswith(settings.prefixes.inputs) else settings.prefixes.inputs + args.key
    keys = layout.for_input(key)
    bucket = BucketQueue(store, layout)
    manifest = bucket.result(key)
    if manifest is None:
        try:
            store.head(key)
        except ObjectNotFound:
            print(f"{key}: no such input in {store.description}; give the key as uploaded "
                  f"({settings.prefixes.inputs}toys/bear.jpg or toys/bear.jpg)", file=sys.stderr)
            return 1
        owner = bucket.folder_owner(key)
        # Another input whose name maps to the same folder (a.png and a.jpg) may hold it.
        held = f"; {keys.output_prefix} holds the result of {owner}" if owner else ""
        print(f"{key}: no results yet (no {keys.manifest}, no {keys.failure}){held}", file=sys.stderr)
        return 1
    if isinstance(manifest, FailureRecord):
        print(f"{key} failed: {manifest.error}: {manifest.message}\n  -> {manifest.hint}", file=sys.stderr)
        return 1
    # The folder name is a safe segment: an input named ".." must not become "--out/..".
    out = Path(args.out) / safe_segment(split_extension(keys.relpath.rsplit("/", 1)[-1])[0])
    wanted = [v.key for v in manifest.variants] + ([manifest.contact_sheet] if manifest.contact_sheet else [])
    # Whoever can write the bucket can write a manifest: only its own plain file names are fetched.
    for obj_key in wanted:
        if keys.output_name(obj_key) is None:
            raise FatalError(f"{keys.manifest} lists {obj_key!r}, which is not a file in {keys.output_prefix}; "
                              "refusing to download it (the manifest was not written by this processor)")
    out.mkdir(parents=True, exist_ok=True)
    for obj_key in wanted:
        (out / obj_key[len(keys.output_prefix):]).write_bytes(store.get(obj_key).body)
    (out / "manifest.json").write_bytes(manifest.to_json_bytes())
    print(f"{len(wanted)} file(s) and manifest.json -> {out}")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.protocol import BucketQueue
    from processor.queue.requeue import error_classes

    store = build_store(settings)
    layout = KeyLayout(settings.prefixes)
    bucket = BucketQueue(store, layout)
    selection = bucket.find_failures(include_permanent=args.all, prefix=args.prefix or "",
                                     errors=error_classes(args.error or []))
    if not args.quiet:
        for f in selection.failures:
            r = f.record
            state = "final" if r.final else f"retrying, {r.attempts} attempt(s) spent"
            kind = "permanent" if r.permanent else "retryable"
            print(f"  {f.input}  {r.error} ({kind}, {state}): {r.message}")
    for key in selection.unreadable:
        print(f"skipped {key}: not a failure record this version can read", file=sys.stderr)
    left_out = (f"; {selection.permanent_skipped} permanent failure(s) left out (bad inputs: --all requeues them "
                "too)" if selection.permanent_skipped else "")
    if args.dry_run:
        print(f"would requeue {len(selection.failures)} failed input(s) of {selection.listed} failure record(s) "
              f"in {store.description}{left_out} (dry run: nothing changed)")
        return 0
    result = bucket.requeue(selection.failures)
    print(f"requeued {len(result.requeued)} failed input(s) of {selection.listed} failure record(s) "
          f"in {store.description}{left_out}")
    if result.requeued and not result.rescan_requested:
        print(f"could not write the rescan hint ({layout.rescan_hint}); running daemons will find these inputs "
              "at their next full scan (run.full_rescan_s)", file=sys.stderr)
    if result.changed:
        print(f"{len(result.changed)} record(s) changed while requeueing (a worker is on them); run again to "
              "requeue them if they end failed", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from processor.app.doctor import run_checks

    rows = run_checks(settings, build_store=build_store, build_registry=build_registry,
                      detect_device=detect_device, config_path=args.config_source, build_captioner=build_captioner)
    width = max(len(r.check) for r in rows)
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<4}  {r.detail}")
    problems = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(problems)} problem(s)" if problems else "\nall checks passed")
    return EXIT_DOCTOR if problems else 0


def cmd_models_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch every configured diffusion model and every add-on model (caption models, CLIP scorer,
    hub LoRAs, IP-Adapters, ControlNets and their preprocessors, segmenter) into the cache,
    safetensors only. The add-ons are ``pull_list.addon_models``, the list ``--dry-run`` prints."""
    from processor.models.loader import ModelLoader, configured_models
    from processor.models.pull_list import addon_models

    loader = ModelLoader(settings.models)
    wanted = configured_models(settings.styles)
    convert = args.convert_pickle or settings.models.convert_pickle
    if args.dry_run:
        return models_pull_dry_run(loader, wanted, convert, addon_models(settings, loader, build_captioner(settings)))
    if convert and loader.offline:
        # Offline, only the conversion can run: from the *.bin files the cache already holds.
        for model, revision in wanted:
            print(f"{model}{'@' + revision if revision else ''}: {loader.pull_converting(model, revision).path}")
        print("offline: converted from the cache only; caption models, LoRAs and the segmenter were not fetched")
        return 0
    if loader.offline:
        raise ConfigError("cannot pull: offline mode is on (models.offline / HF_HUB_OFFLINE); run `processor "
                          "models pull` where the Hub can be reached, or add --dry-run to see what the cache holds")
    addons = addon_models(settings, loader, build_captioner(settings))
    if not wanted and not addons:
        print("no diffusion styles configured: nothing to pull")
        return 0
    for model, revision in wanted:
        resolved = loader.pull_converting(model, revision) if convert else loader.pull(model, revision)
        print(f"{model}{'@' + revision if revision else ''}: {resolved.path}")
    for addon in addons:
        got = addon.fetch(True)
        commit = f" (commit {got.commit})" if got.commit and got.commit != addon.revision else ""
        print(f"{addon.label} {addon.shown}: {got.path}{got.note}{commit}")
    return 0


def models_pull_dry_run(loader: Any, wanted: list[tuple[str, str | None]], convert: bool,
                        addons: list[Any] | None = None) -> int:
    """``models pull --dry-run``: per diffusion model, the files a pull fetches and their sizes
    (hub metadata; offline: what the cache holds), then every add-on model and whether the cache
    has it. Exits non-zero when a model would not load (offline: an add-on missing from the cache)."""
    from processor.errors import EXIT_MODEL
    from processor.models.loader import IGNORE_PATTERNS, component_patterns, is_local
    from processor.models.safeweights import cache_plan, format_plans, hub_plan

    hub = [(m, r) for m, r in wanted if not is_local(m)]
    for model, _ in wanted:
        if is_local(model):
            print(f"{model}: a local folder, nothing to fetch")
    plans = []
    if hub:
        plan = cache_plan if loader.offline else hub_plan
        plans = [plan(m, r, loader.cache_dir, component_patterns, IGNORE_PATTERNS) for m, r in hub]
        print(format_plans(plans, convert=convert))
    elif not addons:
        print("no hub models configured: nothing to fetch")
        return 0
    missing = 0
    if addons:
        print(f"\nadd-on models ({len(addons)}):")
    for addon in addons or []:
        used = f" [{', '.join(addon.styles)}]" if addon.styles else ""
        try:
            got = addon.fetch(False)
            state = f"cached: {got.path}{got.note}" + (f" (commit {got.commit})" if got.commit else "")
        except ProcessorError as exc:
            missing += 1
            state = f"NOT in the cache: {exc}" if loader.offline else "would fetch (not in the cache yet)"
        print(f"  {addon.label} {addon.shown}{used}: {state}")
    failed = not all(p.loads(convert) for p in plans) or (loader.offline and missing > 0)
    return EXIT_MODEL if failed else 0


def cmd_schema(args: argparse.Namespace, settings: Settings | None) -> int:
    schemas = json_schemas()
    if args.write:
        target = Path(args.write)
        target.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (target / name).write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {', '.join(schemas)} to {target}")
    else:
        print(json.dumps(schemas, indent=2))
    return 0


# --------------------------------------------------------------------------- parser


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535; 0 turns metrics off)")
    return port


def _endpoint_hint(settings: Settings | None) -> str:
    """What to check when a remote store keeps failing: usually the endpoint (a wrong host or port
    times out or refuses; a web server that is not S3 answers in ways botocore cannot read)."""
    if settings is None or settings.store.kind == "local":
        return ""
    url = settings.store.endpoint_url
    if url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.username or parts.password:  # never print credentials written into the URL
            url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    return f"\n  check store.endpoint_url ({url or 'unset: AWS'}) and that the S3 server there is up"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="Turn toy photos in a bucket's inputs/ into cartoon variants and a manifest under outputs/.",
        epilog="Configuration: --config PATH, else $PROCESSOR_CONFIG, else ./config.yaml; every key can be "
        "overridden with PROCESSOR_<SECTION>__<KEY>, e.g. PROCESSOR_STORE__KIND=s3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: $PROCESSOR_CONFIG or ./config.yaml)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log.level")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--style", action="append", metavar="NAME", help="style to apply (repeatable); overrides run.styles")
    p.set_defaults(func=cmd_process)

    from processor.pipeline.mask_cli import add_parser as add_mask_parser

    add_mask_parser(sub, common)

    p = sub.add_parser("submit", parents=[common], help="upload photos to inputs/",
                       description="Upload files (folders recursively, keeping relative paths) under inputs/. "
                       "A photo.json next to photo.jpg is uploaded too and acts as its sidecar. Then writes the "
                       "rescan hint under the state prefix, so that running daemons make their next scan a full "
                       "one and find a re-upload under a key they had already passed.")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--prefix", metavar="SUBFOLDER", help="put the files under inputs/SUBFOLDER/")
    p.add_argument("--prompt", help="a prompt stored as object metadata (x-amz-meta-prompt)")
    p.add_argument("--style-image", metavar="FILE",
                   help="a picture of the look for styles with an ip_adapter: uploaded under prefixes.styles and "
                        "named in each photo's metadata (x-amz-meta-style-image)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[common], help="counts of pending, in progress, done and failed inputs",
                       description="Count inputs by state (from LIST calls) and show the most recent failures.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("results", parents=[common], help="download one input's outputs",
                       description="Download the variants, contact sheet and manifest of one input. KEY is the "
                       "input key (inputs/toys/bear.jpg) or its path under inputs/ (toys/bear.jpg).")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("retry", parents=[common], help="requeue failed inputs so workers process them again",
                       description="Requeue failed inputs: each one's failure record is marked retryable with a "
                       "fresh budget of run.max_attempts attempts, and its 'failed' done marker is deleted, so "
                       "the next worker pass processes it again (run --once at once; a running daemon at its next "
                       "scan, which the rescan hint written under the state prefix makes a full one: after its "
                       "current idle wait, at most run.idle_backoff_max_s, or the pass it is working on). By "
                       "default only non-permanent failures (a pipeline stage "
                       "crashed: StageFailed, e.g. after a bad deploy or a broken GPU); --all also requeues bad "
                       "inputs (InvalidInput, e.g. after raising a limit in the config). Uses LIST calls over "
                       "failed/ and the done markers plus one GET per failure record, never a request per "
                       "input; it writes only failure records, done markers and the rescan hint, never outputs, "
                       "so it is safe "
                       "while workers run. Prints each input and a count.",
                       epilog="Examples: processor retry --dry-run; processor retry --error StageFailed --prefix "
                       "toys/2026/; processor retry --all --error ImageTooLarge (after raising "
                       "pipeline.decode.max_pixels).")
    p.add_argument("--all", action="store_true",
                   help="also requeue permanent failures (bad inputs), e.g. after raising a limit in the config")
    p.add_argument("--prefix", metavar="P",
                   help="only inputs whose key under inputs/ starts with P (toys/ is a folder)")
    p.add_argument("--error", action="append", metavar="CLASS",
                   help="only failures of this error class or its subclasses (repeatable), e.g. StageFailed, "
                   "ImageTooLarge, InvalidInput")
    p.add_argument("--dry-run", action="store_true", help="list what would be requeued; change nothing")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("doctor", parents=[common], help="check config, store, credentials, device and models",
                       description="Check the configuration, that the store is reachable with the configured "
                       "credentials and writable, whether its conditional create is atomic (a race of "
                       "concurrent creates on a scratch key), the compute device, and the configured styles' "
                       f"models. Prints a table; exits {EXIT_DOCTOR} when a check fails.")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("models", help="manage diffusion model weights (pull)")
    models_sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = models_sub.add_parser("pull", parents=[common], help="download every configured model into the cache",
                              description="Download each diffusion style's model (safetensors, configs, tokenizer "
                              "files only) at its pinned revision into models.cache_dir, so workers can run with "
                              "models.offline: true / HF_HUB_OFFLINE=1. Fails when a model has no safetensors "
                              "weights for a component (pin revision: to a commit or refs/pr/N that has them, or "
                              "use --convert-pickle).")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files each model would fetch and their sizes (hub metadata; offline: what the "
                   "cache holds), download nothing")
    p.add_argument("--convert-pickle", action="store_true",
                   help="for components with pickle *.bin weights only, fetch them and convert them once to "
                   "safetensors with PyTorch's restricted unpickler (weights_only=True) into "
                   "<cache>/processor-converted/ (also models.convert_pickle: true); offline, converts what the "
                   "cache holds")
    p.set_defaults(func=cmd_models_pull)

    p = sub.add_parser("schema", help="print or write the manifest and failure-record JSON Schemas",
                       description="Print the JSON Schemas of manifest.json and of failure records (the wire "
                       "format other tools read), or write them as *.schema.json files; docs/ holds the "
                       "committed copies.")
    p.add_argument("--write", metavar="DIR", help="write *.schema.json files into DIR")
    p.set_defaults(func=cmd_schema, no_config=True)

    from processor.api.cli import add_parser as add_serve_parser

    add_serve_parser(sub, common)

    from processor.finetune.cli import add_parser as add_finetune_parser

    add_finetune_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        if not getattr(args, "no_config", False):
            settings = load_settings(args.config)
            configure_logging(args.log_level or settings.log.level, settings.log.format)
            args.config_source = args.config or os.environ.get("PROCESSOR_CONFIG") or "config.yaml"
        return args.func(args, settings)
    except FatalError as exc:
        if not logging.getLogger().handlers:
            configure_logging()
        log.error("fatal", extra={"error": type(exc).__name__, "detail": str(exc)})
        hint = _endpoint_hint(settings) if isinstance(exc, StoreAccessError) else ""
        print(f"error: {redact(str(exc))}{hint}", file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:
        # Retries ran out outside the worker's per-item handling (e.g. during a scan).
        print(f"error: store: {redact(str(exc))}{_endpoint_hint(settings)}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

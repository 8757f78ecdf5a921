"""How many requests does a ``--once`` pass need to learn that every input is already done?

The bucket gets ``--inputs`` done inputs: each input, its ``manifest.json`` and its done marker,
written exactly as the worker writes them (keys from ``processor.queue.keys``, the manifest from a real
worker run, re-keyed) but without running the pipeline 10,000 times. Before that, a check: the
worker processes ``--verify`` inputs in one bucket, the builder builds the same inputs in another,
and the two must agree (same input, manifest and done-marker keys; every marker and manifest names
its input's ETag; a scan counts every input done in both).

Then a no-op ``Worker.run_once()`` (the code behind ``processor run --once``) runs over the bucket:
its requests and seconds are the figures. The issue's goal: at most 30 requests for 10,000.

Then the daemon's scans over the same bucket (``IncrementalScanner``, what ``processor run`` uses):
the requests of its first (full) scan, of an idle incremental scan, and of the full scan that the
rescan hint (written by ``processor retry`` and ``processor submit``) asks for.

    python -m bench.scan --inputs 10000 --store both
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import machine, report, s3_store, seaweedfs_server
from processor.cli.compose import build_registry
from processor.config import Settings
from processor.manifest import Manifest
from processor.queue.keys import KeyLayout
from processor.queue.rescan import request_rescan
from processor.queue.scan import IncrementalScanner, scan
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from processor.worker.runner import Worker

DEFAULT_INPUTS = 10_000
#: Inputs the worker really processes to check the builder against.
DEFAULT_VERIFY = 3
#: Threads writing the constructed state.
BUILD_THREADS = 16
#: Pixels: the side of the (tiny) input photo every constructed input shares.
PHOTO_SIDE = 64
#: The issue's goal for 10,000 done inputs.
GOAL_REQUESTS = 30
#: Seconds: the daemon scanner's full_rescan_s here, far longer than the bench, so that only the
#: first scan and the rescan hint make full scans.
DAEMON_FULL_RESCAN_S = 24 * 3600.0


def settings() -> Settings:
    return Settings(styles={"toon": {"engine": "toon", "variants": 2, "max_side": 64}},
                    pipeline={"contact_sheet_height": 32})


def input_key(i: int) -> str:
    return f"inputs/toys/toy-{i:05d}.jpg"


def worker_for(store: ObjectStore, cfg: Settings) -> Worker:
    worker = Worker(store, cfg, build_registry(cfg), worker_id="bench-scan")
    worker.setup()
    return worker


def process_for_real(store: ObjectStore, cfg: Settings, count: int, body: bytes) -> Manifest:
    """Run the worker over ``count`` inputs; returns one of the manifests it wrote (the template)."""
    for i in range(count):
        store.put(input_key(i), body, content_type="image/jpeg")
    if worker_for(store, cfg).run_once() != 0:
        raise RuntimeError("the worker did not finish the verification inputs")
    layout = KeyLayout(cfg.prefixes)
    return Manifest.model_validate_json(store.get(layout.for_input(input_key(0)).manifest).body)


def build_done(store: ObjectStore, cfg: Settings, count: int, body: bytes, template: Manifest) -> None:
    """``count`` done inputs as the worker leaves them: input, manifest (committed with
    If-None-Match), done marker. Variant PNGs are left out: no scan reads them."""
    layout = KeyLayout(cfg.prefixes)
    template_keys = layout.for_input(template.source.key)

    def one(i: int) -> None:
        keys = layout.for_input(input_key(i))
        info = store.put(keys.input, body, content_type="image/jpeg")
        manifest = template.model_copy(update={
            "source": template.source.model_copy(update={"key": keys.input, "etag": info.etag, "size": info.size}),
            "variants": [v.model_copy(update={"key": v.key.replace(template_keys.output_prefix, keys.output_prefix, 1)})
                         for v in template.variants],
            "contact_sheet": keys.contact_sheet if template.contact_sheet else None,
        })
        store.put(keys.manifest, manifest.to_json_bytes(), content_type="application/json", if_none_match=True)
        store.put(keys.done_marker(info.etag, "done"), b"", content_type="text/plain")

    with ThreadPoolExecutor(BUILD_THREADS) as pool:
        list(pool.map(one, range(count)))


def state_of(store: ObjectStore, cfg: Settings) -> dict[str, Any]:
    """What a scan reads and what defines "done", independent of ETag values: input keys, manifest
    keys, done markers as (input path, outcome), and whether every marker and manifest names its
    input's current ETag."""
    layout = KeyLayout(cfg.prefixes)
    inputs = {o.key: o.etag for o in store.list(cfg.prefixes.inputs)}
    manifests = sorted(o.key for o in store.list(cfg.prefixes.outputs) if o.key.endswith("/manifest.json"))
    markers, consistent = [], True
    for obj in store.list(layout.done_prefix):
        rel, etag, outcome = layout.parse_done_marker(obj.key)
        markers.append((rel, outcome))
        consistent &= inputs.get(cfg.prefixes.inputs + rel) is not None and layout.for_input(
            cfg.prefixes.inputs + rel).done_marker(inputs[cfg.prefixes.inputs + rel], outcome) == obj.key
    for key, etag in inputs.items():
        consistent &= Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body).source.etag == etag
    backlog = scan(store, layout)
    return {"inputs": sorted(inputs), "manifests": manifests, "markers": sorted(markers), "consistent": consistent,
            "scan": (backlog.inputs, backlog.done, backlog.failed, len(backlog.pending))}


def verify_builder(make_store: Any, cfg: Settings, count: int, body: bytes) -> Manifest:
    """The worker's state and the builder's state for ``count`` inputs must agree; returns the template."""
    real, built = make_store(), make_store()
    template = process_for_real(real, cfg, count, body)
    build_done(built, cfg, count, body, template)
    a, b = state_of(real, cfg), state_of(built, cfg)
    if a != b or not a["consistent"] or a["scan"] != (count, count, 0, 0):
        raise RuntimeError(f"the constructed state differs from the worker's:\nworker:  {a}\nbuilder: {b}")
    return template


def measure(store: ObjectStore, cfg: Settings, count: int, body: bytes, template: Manifest) -> dict[str, Any]:
    started = time.perf_counter()
    build_done(store, cfg, count, body, template)
    build_s = time.perf_counter() - started
    worker = worker_for(store, cfg)
    before = store.request_count()
    started = time.perf_counter()
    code = worker.run_once()
    seconds = time.perf_counter() - started
    requests = store.request_count() - before
    if code != 0 or sum(worker.totals.values()):
        raise RuntimeError(f"the pass was not a no-op (exit {code}, outcomes {dict(worker.totals)})")
    # Where the seconds go: each of the two listings alone.
    split = {}
    for name, prefix in (("inputs", cfg.prefixes.inputs), ("markers", KeyLayout(cfg.prefixes).done_prefix)):
        started = time.perf_counter()
        sum(1 for _ in store.list(prefix))
        split[f"list_{name}_s"] = time.perf_counter() - started
    return {"requests": requests, "seconds": seconds, "build_s": build_s, **split, **daemon_scans(store, cfg)}


def daemon_scans(store: ObjectStore, cfg: Settings) -> dict[str, int]:
    """Requests of the daemon's scans: its first (full) one, an idle incremental one, and the full
    one a rescan hint asks for. Each includes the HEAD of the hint that every scan makes."""
    layout = KeyLayout(cfg.prefixes)
    scanner = IncrementalScanner(store, layout, DAEMON_FULL_RESCAN_S)
    first, idle = scanner.scan(), scanner.scan()
    if not request_rescan(store, layout, by="bench", count=0):
        raise RuntimeError("the store refused the rescan hint")
    hinted = scanner.scan()
    if not first.full or idle.full or not hinted.full or first.pending or idle.pending or hinted.pending:
        raise RuntimeError(f"unexpected daemon scans: {first}, {idle}, {hinted}")
    return {"daemon_full_requests": first.requests, "daemon_incremental_requests": idle.requests,
            "daemon_hinted_full_requests": hinted.requests}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scan",
        description="Requests and seconds of a no-op `processor run --once` pass (Worker.run_once) over a bucket "
        f"whose inputs are all done (goal: at most {GOAL_REQUESTS} requests for 10,000). The done state is "
        "constructed directly (input, manifest, done marker per input, as the worker writes them), after "
        "checking the construction against a real worker run on --verify inputs.",
    )
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help=f"done inputs (default {DEFAULT_INPUTS})")
    parser.add_argument("--verify", type=int, default=DEFAULT_VERIFY,
                        help=f"inputs the worker really processes to check the construction (default {DEFAULT_VERIFY})")
    parser.add_argument("--store", choices=["local", "s3", "both"], default="both",
                        help="local directory store, SeaweedFS (S3), or both (default both)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser


def main(argv: Sequence[str] | None = None, *, server: Any = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.inputs < 1 or args.verify < 1:
        raise SystemExit("--inputs and --verify must be at least 1")
    from testkit.images import photo_bytes

    cfg = settings()
    body = photo_bytes(PHOTO_SIDE, PHOTO_SIDE)
    results: dict[str, Any] = {"inputs": args.inputs, "verified_with": args.verify}
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        if args.store in ("local", "both"):
            counter = iter(range(1_000_000))

            def local() -> LocalStore:
                return LocalStore(Path(tmp) / f"bucket-{next(counter)}")

            template = verify_builder(local, cfg, args.verify, body)
            m = measure(local(), cfg, args.inputs, body, template)
            results |= {f"local_{k}": v for k, v in m.items()}
        if args.store in ("s3", "both"):
            with seaweedfs_server(server) as s3:
                template = verify_builder(lambda: s3_store(s3), cfg, args.verify, body)
                m = measure(s3_store(s3), cfg, args.inputs, body, template)
            results |= {f"s3_{k}": v for k, v in m.items()}
    results |= {"goal_requests": GOAL_REQUESTS, **machine()}
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

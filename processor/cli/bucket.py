"""``processor status``, ``results`` and ``retry``: job state read and changed through the bucket
protocol (``BucketQueue``), never by hand."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from processor.cli.compose import StoreUse, build_store
from processor.cli.console import Where, config_source
from processor.config import Settings
from processor.errors import FatalError, ObjectNotFound, StyleUnavailable
from processor.manifest import FailureRecord
from processor.queue.keys import KeyLayout, safe_segment, split_extension

#: Failures ``status`` shows.
RECENT_FAILURES = 5


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.protocol import BucketQueue

    config = config_source(args.config)
    if not args.json:  # the header first: it says where, even when the store then fails or hangs
        print(f"config: {config}", flush=True)
    store = build_store(settings, StoreUse.READ)
    if not args.json:
        print(f"store: {store.description}", flush=True)
    status = BucketQueue(store, KeyLayout(settings.prefixes)).status(recent=RECENT_FAILURES)
    counts = {
        "inputs": status.inputs,
        "pending": status.pending,
        "in_progress": status.in_progress,
        "done": status.done,
        "failed": status.failed,
        "cancelled": status.cancelled,
    }
    records = [f.record for f in status.recent_failures]
    if args.json:
        recent = [{"input": r.source.key, "filename": r.source.filename, "error": r.error, "message": r.message,
                   "hint": r.hint, "at": r.created_at.isoformat(), "attempts": r.attempts, "final": r.final}
                  for r in records]
        print(json.dumps({"config": config, "store": store.description, **counts, "recent_failures": recent},
                         indent=2))
        return 0
    for name, value in counts.items():
        print(f"  {name:12} {value}")
    if records:
        print("recent failures:")
        for r in records:
            retry = ("" if r.final else " (waiting for a worker that can load it; no attempt spent)"
                     if r.error == StyleUnavailable.__name__ else f" (attempt {r.attempts} failed; will be retried)")
            print(f"  {r.source.key}{_named(r.source.key, r.source.filename)}: {r.error}{retry}: {r.message}\n"
                  f"      -> {r.hint}")
    return 0


def _named(key: str, filename: str | None) -> str:
    """`` (bear.jpg)`` when the photo was uploaded under another name than its key's (the HTTP
    API names uploads by time); empty when the key already says it."""
    return f" ({filename})" if filename and filename != key.rsplit("/", 1)[-1] else ""


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from processor.queue.protocol import BucketQueue

    store = build_store(settings, StoreUse.READ)
    layout = KeyLayout(settings.prefixes)
    key = args.key if args.key.startswith(settings.prefixes.inputs) else settings.prefixes.inputs + args.key
    keys = layout.for_input(key)
    bucket = BucketQueue(store, layout)
    manifest = bucket.result(key)
    cancelled = bucket.cancelled(key) if manifest is None else None
    if cancelled is not None:
        step = f", step {cancelled.step} of {cancelled.steps}" if cancelled.step else ""
        where = (cancelled.stage or "an unknown stage") + step
        print(f"{key} was cancelled at {where} ({cancelled.cancelled_at}): no results; upload the photo again "
              "to have it processed", file=sys.stderr)
        return 1
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
    # Every variant (a clip: its MP4 and its WebP preview) and the contact sheet.
    wanted = [key for v in manifest.variants for key in (v.key, *([v.video.preview] if v.video else []))]
    wanted += [manifest.contact_sheet] if manifest.contact_sheet else []
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

    store = build_store(settings, StoreUse.READ)
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


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``status``, ``results`` and ``retry`` (``common``: --config, --log-level, --quiet)."""
    p = sub.add_parser("status", parents=[common],
                       help="counts of pending, in progress, done, failed and cancelled inputs",
                       description="Count inputs by state (from LIST calls) and show the most recent failures, "
                       "under a header naming the config file and the store. Reads only: a local bucket "
                       "directory that does not exist is an error (exit 4), never created.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status, where=Where.OUTPUT)

    p = sub.add_parser("results", parents=[common], help="download one input's outputs",
                       description="Download the variants (a clip: its MP4 and WebP preview), contact sheet and "
                       "manifest of one input. KEY is the input key (inputs/toys/bear.jpg) or its path under inputs/ "
                       "(toys/bear.jpg).")
    p.add_argument("key", metavar="KEY", help="the input key (inputs/toys/bear.jpg) or its path under inputs/")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into (DIR/<name>/)")
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

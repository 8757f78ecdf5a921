"""What reading one oversized sidecar costs, capped (what the worker does) and uncapped (before).

For each store, an object of ``--mib`` MiB sits where a sidecar goes. The figures: the Python heap's
peak (``tracemalloc``) and the seconds of ``store.get(key)`` (the whole body, as the worker read
sidecars before) and of ``store.get(key, max_bytes=64 KiB)`` (refused from the object's length),
side by side in one run. Then, for the local store, what its MD5 ETags cost a listing: the first
listing of files dropped in by hand (each hashed once) against the next listing by a new store
object (the hashes read back from each file's xattr).

    python -m bench.bounded_reads --mib 300 --store both
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import MIB, machine, report, s3_store, seaweedfs_server
from processor.errors import ObjectTooLarge
from processor.pipeline.sidecar import MAX_SIDECAR_BYTES
from processor.store.local import LocalStore

#: MiB of the oversized sidecar (the issue's case: 300 MB).
DEFAULT_MIB = 300
#: Files of the listing-cost run, and their size.
LIST_FILES = 2000
LIST_FILE_BYTES = 64 * 1024
KEY = "inputs/toy.json"


def measured(fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak heap bytes) of ``fn()``; ``ObjectTooLarge`` counts as its normal end."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        fn()
    except ObjectTooLarge:
        pass
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, peak


def read_rows(name: str, store: Any) -> list[tuple[str, str]]:
    whole_s, whole_peak = measured(lambda: store.get(KEY))
    capped_s, capped_peak = measured(lambda: store.get(KEY, max_bytes=MAX_SIDECAR_BYTES))
    return [
        (f"{name}: get whole (before)", f"{whole_s:.3f} s, peak heap {whole_peak / MIB:.1f} MiB"),
        (f"{name}: get max_bytes=64 KiB (now)", f"{capped_s:.4f} s, peak heap {capped_peak / MIB:.3f} MiB"),
        (f"{name}: heap ratio before/now", f"{whole_peak / max(capped_peak, 1):,.0f}x"),
    ]


def listing_rows(tmp: Path, files: int) -> list[tuple[str, str]]:
    root = tmp / "listing"
    (root / "inputs").mkdir(parents=True)
    for i in range(files):
        (root / "inputs" / f"{i:05d}.jpg").write_bytes(i.to_bytes(4, "big") * (LIST_FILE_BYTES // 4))
    first = LocalStore(root)
    started = time.perf_counter()
    count = sum(1 for _ in first.list("inputs/"))
    first_s = time.perf_counter() - started
    again = LocalStore(root)
    started = time.perf_counter()
    sum(1 for _ in again.list("inputs/"))
    again_s = time.perf_counter() - started
    return [
        (f"local: first list of {count} dropped-in files ({LIST_FILE_BYTES // 1024} KiB)",
         f"{first_s:.3f} s, {first.etags.hashed} hashed"),
        ("local: next list, new process (hash from xattr)", f"{again_s:.3f} s, {again.etags.hashed} hashed"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help=f"MiB of the sidecar (default {DEFAULT_MIB})")
    parser.add_argument("--store", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--files", type=int, default=LIST_FILES,
                        help=f"files of the local listing run (default {LIST_FILES})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = [(k, str(v)) for k, v in machine().items()]
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-bounded-") as tmp:
        if args.store in ("local", "both"):
            local = LocalStore(Path(tmp) / "bucket")
            local.put(KEY, b" " * size)
            rows += read_rows(f"local, {args.mib} MiB", local)
            rows += listing_rows(Path(tmp), args.files)
        if args.store in ("s3", "both"):
            with seaweedfs_server() as server:
                store = s3_store(server)
                store.put(KEY, b" " * size)
                rows += read_rows(f"SeaweedFS, {args.mib} MiB", store)
    report(dict(rows), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compute processes for CPU styles: a worker draining queued toon inputs with one compute slot
(in its own process) against ``--processes`` compute processes (``run.cpu_workers``), side by side
in one run on the same inputs.

For each: items per second over the whole drain (``processor run --once`` in-process, local store),
the mean seconds per item of each manifest timing (``style:toon`` is the compute), and store
requests per item (which include the reads and writes a running item makes every
``claims.progress_s``: a slower item makes more of them; ``--progress-s`` sets that period). On a
node with free cores the processes multiply the items per second; on a saturated one they only
share the cores (each item's style time grows as much).

    python -m bench.cpu_pool --inputs 40 --processes 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, report
from processor.cli.compose import build_registry, cpu_pipeline
from processor.config import Settings
from processor.store.local import LocalStore
from processor.worker.cpu_pool import ProcessCompute
from processor.worker.runner import Worker
from testkit.images import photo_bytes

DEFAULT_INPUTS = 40


def drain(inputs: int, processes: int, side: int, variants: int, progress_s: float | None = None) -> dict[str, float]:
    """Items per second, mean timings and requests per item of one worker draining ``inputs``."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-pool-") as root:
        claims = {} if progress_s is None else {"progress_s": progress_s}
        settings = Settings(store={"kind": "local", "root": root}, run={"styles": ["toon"]}, claims=claims,
                            styles={"toon": {"engine": "toon", "variants": variants, "max_side": side}})
        store = LocalStore(root)
        for n in range(inputs):
            store.put(f"inputs/{n:04d}.jpg", photo_bytes(side, side * 3 // 4, seed=n))
        pool = (ProcessCompute(functools.partial(cpu_pipeline, settings, ["toon"]), processes)
                if processes > 1 else None)
        worker = Worker(store, settings, build_registry(settings), worker_id="bench", compute_pool=pool)
        try:
            worker.setup()  # the processes start (and load the style) before the clock
            before = store.request_count()
            started = time.perf_counter()
            assert worker.run_once() == 0
            seconds = time.perf_counter() - started
            requests = store.request_count() - before
        finally:
            worker.close()
        timings: dict[str, float] = {}
        for path in Path(root, "outputs").rglob("manifest.json"):
            for name, value in json.loads(path.read_text())["timings"].items():
                timings[name] = timings.get(name, 0.0) + value / inputs
    return {"items_per_s": inputs / seconds, **{f"{k}_s": v for k, v in timings.items()},
            "requests_per_item": requests / inputs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_pool", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="queued inputs to drain")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)),
                        help="compute processes of the second drain (default: this machine's cores)")
    parser.add_argument("--side", type=int, default=256, help="photo width and the style's max_side")
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--progress-s", type=float,
                        help="claims.progress_s: seconds between a running item's progress reads and writes "
                             "(default: the shipped one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = machine() | {"inputs": args.inputs, "processes": args.processes,
                                           "load_average": os.getloadavg()[0]}
    results |= {f"one_slot_{k}": v for k, v in drain(args.inputs, 1, args.side, args.variants, args.progress_s).items()}
    results |= {f"processes_{k}": v for k, v in drain(args.inputs, args.processes, args.side, args.variants,
                                                                   args.progress_s).items()}
    results["processes_over_one_slot"] = results["processes_items_per_s"] / results["one_slot_items_per_s"]
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

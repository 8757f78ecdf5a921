"""Start-up time and peak memory of the toon quickstart (``processor run --once``), with and
without PyTorch imported, side by side in one run.

Each run is a fresh process on a fresh local bucket of ``--photos`` synthetic photos, with the
quickstart's toon style, as ``scripts/quickstart.sh`` runs it. Two variants alternate, round after
round, on the same work:

- ``lazy``: ``python -m processor run --once`` as shipped; the toon style needs no PyTorch, so
  nothing imports it;
- ``torch``: the same command in a process that imports ``torch`` first (what every run paid
  when device detection imported it for any configured style).

Figures (medians over ``--rounds``):

- ``<variant>_startup_s``: from spawning the process to its first ``scanned`` log event (imports,
  config, store, engines set up, first scan done);
- ``<variant>_total_s``: the whole run, every photo processed;
- ``<variant>_peak_rss_mib``: the process's peak resident memory (``ru_maxrss`` from ``wait4``);
- ``lazy_torch_loaded``: whether ``torch`` was in ``sys.modules`` at the end of a lazy run (must be
  ``False``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MIB, machine, report

#: The child: optionally import torch, run the CLI, then note whether torch got imported.
CHILD = (
    "import sys\n"
    "if sys.argv[1] == 'torch':\n"
    "    import torch  # noqa: F401\n"
    "from processor.cli.main import main\n"
    "code = main(sys.argv[3:])\n"
    "open(sys.argv[2], 'w').write('1' if 'torch' in sys.modules else '0')\n"
    "raise SystemExit(code)\n"
)
CONFIG = (
    "store: {kind: local, root: bucket}\n"
    "run: {styles: [toon]}\n"
    "styles: {toon: {engine: toon, variants: 4}}\n"
    "caption: {mode: none}\n"
    "metrics: {port: 0}\n"
)


def make_project(root: Path, photos: int, size: int) -> None:
    from testkit.images import photo_bytes

    (root / "config.yaml").write_text(CONFIG)
    inputs = root / "bucket" / "inputs"
    inputs.mkdir(parents=True)
    for i in range(photos):
        (inputs / f"toy-{i:03d}.jpg").write_bytes(photo_bytes(size, size * 3 // 4, seed=i))


def run_once(variant: str, photos: int, size: int) -> dict[str, Any]:
    """One fresh ``run --once`` of ``variant``: seconds to its first scan, in all, and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        make_project(root, photos, size)
        flag = root / "torch-loaded"
        env = dict(os.environ, PROCESSOR_CONFIG=str(root / "config.yaml"), PROCESSOR_LOG__FORMAT="json")
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, variant, str(flag), "run", "--once"],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        startup = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if startup is None and '"scanned"' in line:
                startup = time.perf_counter() - started
        _pid, status, usage = os.wait4(proc.pid, 0)
        total = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant}: processor run --once exited {proc.returncode}")
        done = len(list((root / "bucket" / "outputs").glob("*/manifest.json")))
        if done != photos:
            raise RuntimeError(f"{variant}: {done} of {photos} photos have a manifest")
        # Linux reports ru_maxrss in KiB.
        return {"startup_s": startup, "total_s": total, "peak_rss_mib": usage.ru_maxrss * 1024 / MIB,
                "torch_loaded": flag.read_text() == "1"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8, help="synthetic photos per run (default 8)")
    parser.add_argument("--size", type=int, default=640, help="photo width in pixels (default 640)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import importlib.util

    variants = ["lazy"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            runs[variant].append(run_once(variant, args.photos, args.size))

    results: dict[str, Any] = {**machine(), "photos": args.photos, "rounds": args.rounds}
    for variant, found in runs.items():
        for figure in ("startup_s", "total_s", "peak_rss_mib"):
            results[f"{variant}_{figure}"] = statistics.median(r[figure] for r in found)
    results["lazy_torch_loaded"] = any(r["torch_loaded"] for r in runs["lazy"])
    if "torch" in runs:
        results["torch_startup_extra_s"] = results["torch_startup_s"] - results["lazy_startup_s"]
        results["torch_peak_rss_extra_mib"] = results["torch_peak_rss_mib"] - results["lazy_peak_rss_mib"]
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()

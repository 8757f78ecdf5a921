"""Label tables: computing them vs reading them from the cache, side by side in one run.

Computing: the real clip-interrogator label lists of ``caption.mode: fast`` encoded by a CLIP text
tower of the configured architecture (default ViT-L-14, the notebook's) with random weights (speed
does not depend on weight values). ``--labels N`` of them are timed and the full set (111,867
labels for fast mode) is extrapolated. Reading: a full-size float16 table written to and read back
from the local cache (``DirectoryCache``) through the same encode/decode as the caption stage.

    python bench/caption_tables.py                    # CPU, 512 labels timed
    python bench/caption_tables.py --device cuda --labels 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--labels", type=int, default=512, help="labels timed (the rest is extrapolated)")
    parser.add_argument("--chunk", type=int, default=256, help="labels per CLIP batch (caption.chunk_size)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object (last line)")
    args = parser.parse_args()

    import open_clip

    from processor.pipeline.caption import TABLES_BY_MODE, DirectoryCache, decode_table, encode_table, label_lists
    from processor.pipeline.interrogator import encode_labels

    lists = label_lists(None)
    all_labels = [label for table in TABLES_BY_MODE["fast"] for label in lists[table]]
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    model = open_clip.create_model(args.arch, pretrained=None, precision=precision, device=args.device).eval()
    tokenize = open_clip.get_tokenizer(args.arch)
    sample = all_labels[: args.labels]
    encode_labels(model, tokenize, sample[: min(32, len(sample))], args.device, args.chunk)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    embeds = encode_labels(model, tokenize, sample, args.device, args.chunk)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    per_second = len(sample) / seconds
    full_compute = len(all_labels) / per_second

    table = np.random.default_rng(0).standard_normal((len(all_labels), embeds.shape[1])).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        cache = DirectoryCache(Path(tmp))
        started = time.perf_counter()
        cache.put("t.safetensors", encode_table(table, "bench", "all", len(all_labels)))
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        loaded = decode_table(cache.get("t.safetensors"), len(all_labels))
        read_s = time.perf_counter() - started
    assert loaded is not None and loaded.shape == table.shape
    size_mb = table.nbytes / 1e6
    print(f"device {args.device}, {args.arch} text tower ({precision}), torch {torch.__version__}")
    print(f"compute: {len(sample)} labels in {seconds:.2f} s = {per_second:,.0f} labels/s; "
          f"all {len(all_labels):,} fast-mode labels: about {full_compute:,.0f} s")
    print(f"cache:   {size_mb:.0f} MB table written in {write_s:.2f} s, read back in {read_s:.2f} s")
    print(f"ratio:   computing the tables takes {full_compute / read_s:,.0f}x as long as "
          "reading them from the local cache")
    if args.json:
        print(json.dumps({"device": args.device, "arch": args.arch, "precision": precision, "torch": torch.__version__,
                          "labels_timed": len(sample), "labels_per_s": per_second, "labels_fast_mode": len(all_labels),
                          "full_compute_s": full_compute, "table_mb": size_mb, "cache_write_s": write_s,
                          "cache_read_s": read_s, "ratio_compute_over_read": full_compute / read_s}))


if __name__ == "__main__":
    main()

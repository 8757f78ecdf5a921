"""``processor mask FILE_OR_DIR... --out DIR``: the subject mask of local photos, before any GPU.

For each photo it writes ``OUT/<path>.mask.png`` (the feathered mask the background styles use)
and ``OUT/<path>.overlay.jpg`` (``processor.pipeline.mask.overlay``: the photo with the background
dimmed and tinted and the subject outlined), then ``OUT/masks.json`` (per photo: coverage,
segmenter, fallbacks). The masker is the configured one (``pipeline.mask``: the u2netp model by
default), or ``--onnx MODEL`` to try an ONNX model, or ``--grabcut`` to see the weight-free one,
without editing the config; a photo that does not decode is reported and skipped, the rest still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processor.cli.console import Where

if TYPE_CHECKING:
    from processor.config import OnnxFamily

#: The summary file written beside the masks.
SUMMARY_NAME = "masks.json"


@dataclass(frozen=True)
class MaskResult:
    """One photo's line in ``masks.json``."""

    path: str
    mask: str | None = None
    overlay: str | None = None
    coverage: float | None = None
    segmenter: str | None = None
    #: Why a background style would leave this photo unchanged (coverage out of bounds).
    fallback: str | None = None
    #: Why the configured model did not make the mask (GrabCut did).
    segmenter_fallback: str | None = None
    #: The photo could not be read: why, and what to change.
    error: str | None = None


def build_masker(settings: Any, onnx: str | None, family: OnnxFamily | None, *, grabcut: bool = False) -> Any:
    from processor.config import OnnxSegmenterSettings
    from processor.models.loader import ModelLoader
    from processor.pipeline.mask import SubjectMasker

    mask = settings.pipeline.mask
    if grabcut:
        mask = mask.model_copy(update={"segmenter": None, "onnx": None})
    elif onnx:
        mask = mask.model_copy(update={"segmenter": None, "onnx": OnnxSegmenterSettings(
            model=onnx, family=family or "u2net")})
    return SubjectMasker(mask, ModelLoader(settings.models))


def cmd_mask(args: argparse.Namespace, settings: Any) -> int:
    from tqdm import tqdm

    from processor.errors import EXIT_SOME_FAILED, ConfigError, ItemError
    from processor.localfiles import walk
    from processor.pipeline.decode import decode_image
    from processor.pipeline.encode import encode_jpeg
    from processor.pipeline.mask import overlay
    from processor.queue.keys import is_sidecar

    # Sidecars (photo.json) lie beside the photos, as in the bucket: not photos themselves.
    files = [(path, rel) for path, rel in walk(args.paths) if not is_sidecar(rel)]
    if not files:
        raise ConfigError(f"no photos found under {', '.join(args.paths)}")
    masker = build_masker(settings, args.onnx, args.family, grabcut=args.grabcut)
    masker.setup()
    out = Path(args.out)
    results: list[MaskResult] = []
    for path, rel in tqdm(files, desc="masks", unit="img", disable=args.quiet):
        stem = Path(rel).with_suffix("").as_posix()
        try:
            decoded = decode_image(path.read_bytes(), settings.pipeline.decode, name=str(path))
        except ItemError as exc:
            tqdm.write(f"FAILED {rel}: {exc}  -> {exc.hint}", file=sys.stderr)
            results.append(MaskResult(path=rel, error=f"{exc} ({exc.hint})"))
            continue
        mask = masker(decoded.image)
        mask_path, overlay_path = out / f"{stem}.mask.png", out / f"{stem}.overlay.jpg"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask.image().save(mask_path)
        overlay_path.write_bytes(encode_jpeg(overlay(decoded.image, mask.hard)))
        results.append(MaskResult(path=rel, mask=mask_path.relative_to(out).as_posix(),
                                  overlay=overlay_path.relative_to(out).as_posix(), coverage=round(mask.coverage, 4),
                                  segmenter=mask.method, fallback=mask.fallback,
                                  segmenter_fallback=mask.segmentation.fallback))
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_NAME).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    failed = sum(r.error is not None for r in results)
    unusable = sum(r.fallback is not None for r in results)
    print(f"{len(results) - failed} masks ({masker.method}), {unusable} unusable for backgrounds, "
          f"{failed} failed -> {out}")
    if masker.segmentation.fallback:
        print(f"note: {masker.segmentation.fallback}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else 0


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``processor mask`` on the CLI's subparsers (``common``: --config, --quiet, ...)."""
    p = subparsers.add_parser(
        "mask", parents=[common], help="write subject masks and overlays for local photos (no GPU needed)",
        description="Compute the subject mask that background styles use (pipeline.mask: the u2netp model by "
        "default, GrabCut, or the configured ONNX / transformers segmenter) for local photos, and write "
        "OUT/<path>.mask.png, "
        "OUT/<path>.overlay.jpg (background tinted, subject outlined) and OUT/masks.json (coverage, "
        "segmenter, fallbacks per photo), to check the masks before spending a GPU on backgrounds.")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="photos, and folders searched recursively")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--onnx", metavar="MODEL", help="use this ONNX segmenter (u2netp, a .onnx file or a hub "
                       "repo) instead of pipeline.mask")
    which.add_argument("--grabcut", action="store_true", help="use GrabCut (no weights) instead of pipeline.mask, "
                       "to compare it with the model")
    p.add_argument("--family", choices=["u2net", "isnet", "birefnet"],
                   help="the --onnx model's family (default u2net)")
    p.set_defaults(func=cmd_mask, where=Where.CONFIG)
    return p

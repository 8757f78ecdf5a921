"""Turn one input's variants into the bytes and manifest entries to upload.

Shared by the worker (bucket) and ``processor process`` (local folder) so both produce the same
files: ``<style>-<nn>.png`` with a ``parameters`` text chunk (a clip: ``<style>-<nn>.mp4`` and its
animated ``<style>-<nn>.webp`` preview, ``processor.pipeline.video_encode``), the contact sheet
(a clip shows its first, middle and last frames), ``mask.png`` (the subject mask) and
``mask-overlay.jpg`` (the mask drawn over the photo, for the job page) when a style changed the
background, and ``control-<type>.png`` (a ControlNet's conditioning image) when a style used one.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from PIL import Image

from processor.config import DEFAULT_CONTACT_SHEET_MAX_PIXELS
from processor.config.base import DEFAULT_MP4_CRF
from processor.manifest import (
    Background,
    ClipSimilarity,
    ClipSourceRecord,
    Control,
    ControlPreprocessor,
    LicenseRecord,
    Structure,
    Variant,
    VideoRecord,
)
from processor.pipeline.base import ControlUse, VariantImage, VideoFrames
from processor.pipeline.encode import (
    PNG_COMPRESS_LEVEL,
    contact_sheet,
    encode_jpeg,
    encode_png,
    infotext_parameters,
    sha256_hex,
)
from processor.pipeline.mask import preview_overlay
from processor.pipeline.video_encode import encode_mp4, encode_webp
from processor.queue.keys import CONTACT_SHEET_NAME, MASK_NAME, MASK_OVERLAY_NAME, safe_segment


@dataclass(frozen=True)
class OutputFile:
    """One file to upload into an input's output folder."""

    #: Name relative to the input's output folder.
    name: str
    body: bytes
    content_type: str


#: Threads that encode one input's PNGs at once. zlib releases the GIL, so the encodes run in
#: parallel: at level 6 a 512 px PNG costs ~50-150 ms of CPU, and five of them one after another
#: would make the upload stage, not the GPU, the bottleneck (``python -m bench.overlap``).
ENCODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _encode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode")
        return _pool


def variant_name(style: str, index: int) -> str:
    return f"{safe_segment(style)}-{index:02d}.png"


def clip_names(style: str, index: int) -> tuple[str, str]:
    """A clip's MP4 and its animated WebP preview, named like a still variant."""
    stem = f"{safe_segment(style)}-{index:02d}"
    return f"{stem}.mp4", f"{stem}.webp"


#: Frames of each clip the contact sheet shows (its first, middle and last).
SHEET_FRAMES_PER_CLIP = 3


def sheet_frames(clip: VideoFrames) -> list[tuple[int, Image.Image]]:
    """The (frame number, frame) pairs of a clip the contact sheet shows: evenly spread, first and last included."""
    count = len(clip.frames)
    picks = sorted({round(i * (count - 1) / (SHEET_FRAMES_PER_CLIP - 1)) for i in range(SHEET_FRAMES_PER_CLIP)})
    return [(n, clip.frames[n]) for n in picks]


def _encode_variant(v: VariantImage, png_compress_level: int, crf: int) -> tuple[bytes, ...]:
    """A still's PNG (with its ``parameters`` text); a clip's MP4 and WebP preview."""
    if v.video is not None:
        return encode_mp4(v.video.frames, v.video.fps, crf=crf), encode_webp(v.video.frames, v.video.fps)
    return (encode_png(v.image, infotext_parameters(
        v.parameters | {"seed": v.seed, "style": v.style, "engine": v.engine}
        | _background_text(v.background) | _control_text(v)), compress_level=png_compress_level),)


def _video_record(v: VariantImage, preview: str, preview_body: bytes, output_prefix: str) -> VideoRecord | None:
    clip = v.video
    if clip is None:
        return None
    source = clip.source
    key = None
    if source.style is not None and source.index is not None:
        key = output_prefix + variant_name(source.style, source.index)
    return VideoRecord(frames=len(clip.frames), fps=clip.fps, duration_s=clip.duration_s,
                       preview=output_prefix + preview, preview_sha256=sha256_hex(preview_body),
                       source=ClipSourceRecord(kind=source.kind, style=source.style, index=source.index,
                                               seed=source.seed, key=key))


def encode_outputs(
    original: Image.Image,
    variants: list[VariantImage],
    *,
    output_prefix: str,
    sheet_height: int | None,
    png_compress_level: int = PNG_COMPRESS_LEVEL,
    sheet_max_pixels: int = DEFAULT_CONTACT_SHEET_MAX_PIXELS,
    video_crf: int = DEFAULT_MP4_CRF,
) -> tuple[list[OutputFile], list[Variant], str | None]:
    """(files in upload order, manifest variant entries, contact sheet name or None). A clip
    (``VariantImage.video``) is written as ``<style>-<nn>.mp4`` and its ``.webp`` preview."""
    files: list[OutputFile] = []
    entries: list[Variant] = []
    # One subject mask per input (every background style shares it), written before the variants.
    mask = next((v.mask for v in variants if v.mask is not None), None)
    if mask is not None:
        files.append(OutputFile(MASK_NAME, _plain_png(mask.image(), png_compress_level), "image/png"))
        files.append(OutputFile(MASK_OVERLAY_NAME, encode_jpeg(preview_overlay(original, mask)), "image/jpeg"))
    control_files = _control_files(variants, png_compress_level)
    files.extend(control_files.values())
    bodies = _encode_pool().map(lambda v: _encode_variant(v, png_compress_level, video_crf), variants)
    for v, encoded in zip(variants, bodies, strict=True):
        video = None
        if v.video is not None:
            (name, preview), (body, preview_body) = clip_names(v.style, v.index), encoded
            files.append(OutputFile(name, body, "video/mp4"))
            files.append(OutputFile(preview, preview_body, "image/webp"))
            video = _video_record(v, preview, preview_body, output_prefix)
        else:
            name, body = variant_name(v.style, v.index), encoded[0]
            files.append(OutputFile(name, body, "image/png"))
        entries.append(
            Variant(
                key=output_prefix + name,
                style=v.style,
                engine=v.engine,
                index=v.index,
                seed=v.seed,
                width=v.image.width,
                height=v.image.height,
                sha256=sha256_hex(body),
                parameters=v.parameters,
                background=Background.model_validate(v.background | {
                    "mask": output_prefix + MASK_NAME, "mask_overlay": output_prefix + MASK_OVERLAY_NAME})
                if v.background else None,
                control=[Control(type=c.type, model=c.model, kind=c.kind, revision=c.revision, scale=c.scale,
                                 guidance_end=c.guidance_end, settings=dict(c.settings),
                                 image=output_prefix + control_files[id(c.image)].name,
                                 preprocessor=_preprocessor(c)) for c in v.control],
                structure=Structure.model_validate(asdict(v.structure)) if v.structure is not None else None,
                clip=ClipSimilarity.model_validate(asdict(v.clip)) if v.clip is not None else None,
                licenses=[LicenseRecord.model_validate(asdict(u)) for u in v.licenses],
                video=video,
            )
        )
    sheet_name = None
    if sheet_height and variants:
        labels = ["original"] + (["mask"] if mask is not None else [])
        tiles = [mask.image().convert("RGB")] if mask is not None else []
        for v in variants:  # a clip shows a few of its frames
            shown = sheet_frames(v.video) if v.video is not None else [(None, v.image)]
            labels += [_tile_label(v) + (f" f{n}" if n is not None else "") for n, _ in shown]
            tiles += [frame for _, frame in shown]
        sheet = contact_sheet(original, tiles, height=sheet_height, labels=labels, max_pixels=sheet_max_pixels,
                              legend=_sheet_legend(variants))
        files.append(OutputFile(CONTACT_SHEET_NAME, sheet, "image/jpeg"))
        sheet_name = CONTACT_SHEET_NAME
    return files, entries, sheet_name


def attempt_scoped(
    files: list[OutputFile], entries: list[Variant], sheet_name: str | None, *, output_prefix: str, token: str
) -> tuple[list[OutputFile], list[Variant], str | None]:
    """The same outputs under names of their own (``toon-00.<token>.png``), and the manifest
    entries pointing at them.

    For a worker that found its plain names taken and may not replace them (``shards``
    coordination: the object may be a twin pod's variant, which that pod may commit any moment).
    The manifest names every file it describes, so readers follow it either way."""

    def rename(name: str) -> str:
        stem, dot, ext = name.rpartition(".")
        return f"{stem}.{token}.{ext}" if dot else f"{name}.{token}"

    renamed = {f.name: rename(f.name) for f in files}
    by_key = {output_prefix + old: output_prefix + new for old, new in renamed.items()}
    new_entries = []
    for entry in entries:
        background = entry.background
        if background is not None and background.mask in by_key:
            background = background.model_copy(update={
                "mask": by_key[background.mask],
                "mask_overlay": by_key.get(background.mask_overlay or "", background.mask_overlay)})
        control = [c.model_copy(update={"image": by_key.get(c.image, c.image)}) for c in entry.control]
        video = entry.video
        if video is not None:
            source = video.source.model_copy(update={"key": by_key.get(video.source.key or "", video.source.key)})
            video = video.model_copy(update={"preview": by_key.get(video.preview, video.preview), "source": source})
        new_entries.append(entry.model_copy(update={"key": by_key.get(entry.key, entry.key), "background": background,
                                                    "control": control, "video": video}))
    new_files = [OutputFile(renamed[f.name], f.body, f.content_type) for f in files]
    return new_files, new_entries, renamed.get(sheet_name) if sheet_name else None


def _plain_png(image: Image.Image, compress_level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level, optimize=False)
    return buffer.getvalue()


def _background_text(background: dict | None) -> dict[str, object]:
    """The background's mode, prompt and seed for the PNG ``parameters`` text (A1111 readers)."""
    if not background:
        return {}
    return {"background_mode": background["mode"] if background.get("applied") else "none",
            "background_prompt": background.get("prompt"), "background_seed": background.get("seed")}


def _control_files(variants: list[VariantImage], compress_level: int) -> dict[int, OutputFile]:
    """One file per conditioning image (every variant of a style shares it), keyed by the image's
    id: ``control-<type>.png``, or ``<style>-control-<type>.png`` when another style's map of
    that type already took the name (different thresholds make a different map), then
    ``<style>-control-<type>-<n>.png`` (two maps of one type in one style's list)."""
    made: dict[int, OutputFile] = {}
    taken: set[str] = set()
    for v in variants:
        for c in v.control:
            if id(c.image) in made:
                continue
            name = f"control-{safe_segment(c.type)}.png"
            if name in taken:
                name = f"{safe_segment(v.style)}-{name}"
            stem, n = name.removesuffix(".png"), 2
            while name in taken:
                name, n = f"{stem}-{n}.png", n + 1
            taken.add(name)
            made[id(c.image)] = OutputFile(name, _plain_png(c.image, compress_level), "image/png")
    return made


def _preprocessor(use: ControlUse) -> ControlPreprocessor | None:
    if use.preprocessor is None:
        return None
    return ControlPreprocessor(model=use.preprocessor, revision=use.preprocessor_revision,
                               weights="converted-from-pickle" if use.preprocessor_converted else "safetensors")


def _control_text(variant: VariantImage) -> dict[str, object]:
    """The ControlNets and T2I-Adapters for the PNG ``parameters`` text (``infotext_parameters``
    writes them as A1111's ``ControlNet <i>`` units, as its ControlNet extension does for both)."""
    if not variant.control:
        return {}
    return {"controlnet_units": [{"type": c.type, "model": c.model, "kind": c.kind, "scale": c.scale,
                                  "guidance_end": c.guidance_end,
                                  "settings": dict(c.settings) | ({"preprocessor": c.preprocessor}
                                                                  if c.preprocessor else {})}
                                 for c in variant.control]}


#: What the contact sheet's score labels mean (``_tile_label``), one entry per score.
STRUCTURE_LEGEND = "s = structure: edge agreement with the photo (0 none of its outlines kept, 1 all of them)"
CLIP_LEGEND = "c = CLIP similarity to the photo (0-1)"


def _sheet_legend(variants: list[VariantImage]) -> str | None:
    """The legend of the scores the sheet's labels carry; None when they carry none."""
    parts = [STRUCTURE_LEGEND] if any(v.structure is not None for v in variants) else []
    parts += [CLIP_LEGEND] if any(v.clip is not None for v in variants) else []
    return "; ".join(parts) or None


def _tile_label(variant: VariantImage) -> str:
    """``<style> #<index>``, and its structure score and CLIP similarity when it has them
    (``s0.62``, ``c0.91``)."""
    label = f"{variant.style} #{variant.index}"
    label = label if variant.structure is None else f"{label} s{variant.structure.f1:.2f}"
    return label if variant.clip is None else f"{label} c{variant.clip.similarity:.2f}"

"""Clips without a model, for the tests of what happens after ``engine: animate`` (encoding, the
manifest, the API, the web page): frames of a toy-like disc moving across a gradient, encoded and
committed exactly as the worker does it (``processor.pipeline.outputs.encode_outputs``)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from processor.manifest import Manifest, Source, WorkerInfo
from processor.pipeline.base import ClipSource, VariantImage, VideoFrames
from processor.pipeline.outputs import encode_outputs
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore


def moving_frames(width: int, height: int, count: int) -> list[Image.Image]:
    """``count`` frames of a disc crossing a blue-to-orange gradient, one step per frame."""
    frames = []
    radius = max(2, min(width, height) // 5)
    for n in range(count):
        frame = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(frame)
        for y in range(height):
            draw.line([(0, y), (width, y)], fill=(40 + 180 * y // height, 90, 200 - 150 * y // height))
        x = radius + (width - 2 * radius) * n // max(1, count - 1)
        draw.ellipse([x - radius, height // 2 - radius, x + radius, height // 2 + radius], fill=(150, 60, 170))
        frames.append(frame)
    return frames


def clip_variant(style: str, index: int, frames: list[Image.Image], fps: int, *, seed: int = 0) -> VariantImage:
    """A clip as the animate engine hands it over (its record trimmed to what the encoder reads)."""
    return VariantImage(style=style, engine="animate", index=index, seed=seed, image=frames[0],
                        parameters={"engine": "animate", "frames": len(frames), "fps": fps},
                        video=VideoFrames(frames, fps, ClipSource()))


def commit_clip_job(store: ObjectStore, layout: KeyLayout, input_key: str, etag: str, photo: Image.Image,
                    variants: list[VariantImage]) -> Manifest:
    """Write ``variants``' files and then the manifest of ``input_key`` (version ``etag``), as the
    worker commits a done input."""
    keys = layout.for_input(input_key)
    files, entries, sheet = encode_outputs(photo, variants, output_prefix=keys.output_prefix, sheet_height=64)
    for f in files:
        store.put(keys.output_prefix + f.name, f.body, content_type=f.content_type)
    manifest = Manifest(source=Source(key=input_key, etag=etag, size=1), variants=entries,
                        contact_sheet=keys.output_prefix + sheet if sheet else None,
                        worker=WorkerInfo(id="test", version="0", device="cpu"))
    store.put(keys.manifest, manifest.to_json_bytes())
    return manifest

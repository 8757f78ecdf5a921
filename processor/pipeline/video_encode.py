"""Clip encoding (``engine: animate``): an MP4 that plays in every browser and an animated WebP
preview of the same frames.

- MP4: H.264 (libx264, through PyAV, whose wheels carry their own FFmpeg and x264: nothing to
  install on the machine), 4:2:0 chroma (``yuv420p``: what browsers decode; x264 would otherwise
  keep 4:4:4 from RGB input), even sides (4:2:0 halves them; every working size is a multiple of
  8), ``+faststart`` (the index before the data, so a browser starts playing before the whole file
  is there). FFmpeg moves the index by re-reading its output, so the file is written to a
  temporary folder first.
- WebP: Pillow's animated WebP, every frame, the same frame duration, looping: the ``<video>``
  poster and a preview that plays in an ``<img>``.

Both are deterministic: equal frames give equal bytes (bit-exact muxing, no wall-clock
timestamps, frame timestamps set, a fixed x264 thread count, which decides how x264 splits its
work, and x264's macroblock-tree rate control off: ``MP4_X264_PARAMS``).

PyAV comes with the ``sd`` extra (``pip install toy-cartoonizer[sd]``); it is imported here only,
when a clip is encoded or read.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from processor.config.base import DEFAULT_MP4_CRF
from processor.errors import ConfigError

#: The H.264 encoder (the PyAV wheels' x264) and the chroma layout browsers decode.
MP4_CODEC = "libx264"
MP4_PIXEL_FORMAT = "yuv420p"
#: x264's speed/size trade-off: ``medium`` (its default) encodes a 25-frame 1024 x 576 clip in
#: about a second on one core.
MP4_PRESET = "medium"
#: x264 threads: fixed, because the thread count changes x264's output bytes.
MP4_THREADS = 4
#: x264's macroblock-tree rate control off: with it on, the SIMD code of the x264 in PyAV's wheels
#: encoded the same frames differently about once in 40-100 runs; off, 120 of 120 were equal (at a
#: few percent more bytes for the same ``crf``).
MP4_X264_PARAMS = "mbtree=0"
#: WebP quality of the preview (0-100) and Pillow's effort (0 fast .. 6 small).
WEBP_QUALITY = 80
WEBP_METHOD = 4
#: What installs PyAV.
VIDEO_EXTRA = "pip install 'toy-cartoonizer[sd]' (it brings PyAV, the av package)"


@dataclass(frozen=True)
class ClipInfo:
    """What a decoder reads back from an MP4 (tests, ``processor results`` checks)."""

    codec: str
    pixel_format: str
    width: int
    height: int
    frames: int
    fps: float
    duration_s: float


def _av():
    try:
        import av
    except ImportError as exc:  # the video extra is not installed
        raise ConfigError(f"writing MP4 clips needs PyAV: {VIDEO_EXTRA}") from exc
    return av


def require() -> None:
    """``ConfigError`` naming the extra unless PyAV and its H.264 encoder are at hand (an animate
    style checks at start, not on its first clip)."""
    av = _av()
    if MP4_CODEC not in av.codecs_available:
        raise ConfigError(f"this PyAV build has no {MP4_CODEC} encoder; install the PyPI wheel: {VIDEO_EXTRA}")


def check_frames(frames: Sequence[Image.Image]) -> tuple[int, int]:
    """The frames' common size, after checking there are frames and their sides are even."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    width, height = frames[0].size
    if any(f.size != (width, height) for f in frames):
        raise ValueError(f"every frame of a clip must be {width}x{height}")
    if width % 2 or height % 2:
        raise ValueError(f"{width}x{height}: H.264 4:2:0 needs even sides")
    return width, height


def encode_mp4(frames: Sequence[Image.Image], fps: int, *, crf: int = DEFAULT_MP4_CRF) -> bytes:
    """``frames`` as an H.264 MP4 (yuv420p, ``+faststart``) playing at ``fps``."""
    av = _av()
    width, height = check_frames(frames)
    with tempfile.TemporaryDirectory(prefix="clip-") as folder:
        path = Path(folder) / "clip.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"},
                     container_options={"fflags": "+bitexact"}) as container:
            stream = container.add_stream(MP4_CODEC, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, MP4_PIXEL_FORMAT
            stream.options = {"crf": str(crf), "preset": MP4_PRESET, "threads": str(MP4_THREADS),
                              "x264-params": MP4_X264_PARAMS}
            for index, image in enumerate(frames):
                frame = _yuv_frame(av, image)
                # Timestamps set, not left to the encoder: x264's rate control reads them.
                frame.pts, frame.time_base = index, Fraction(1, fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        return path.read_bytes()


def _yuv_frame(av: Any, image: Image.Image) -> Any:
    """``image`` as a 4:2:0 frame that owns its pixels (PyAV may wrap an RGB array without copying
    it: converted here, while ``rgb`` lives, not later inside ``encode``)."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=MP4_PIXEL_FORMAT)


def encode_webp(frames: Sequence[Image.Image], fps: int) -> bytes:
    """``frames`` as a looping animated WebP at ``fps`` (Pillow)."""
    check_frames(frames)
    buffer = io.BytesIO()
    first, *rest = [f.convert("RGB") for f in frames]
    # WebP frame durations are whole milliseconds.
    first.save(buffer, format="WEBP", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0,
               quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buffer.getvalue()


def probe_mp4(data: bytes) -> ClipInfo:
    """Decode ``data`` whole and say what it holds (frames counted by decoding, not from headers)."""
    av = _av()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        return ClipInfo(context.name, context.pix_fmt or "", context.width, context.height, frames, fps, duration)

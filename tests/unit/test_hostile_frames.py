"""Animated inputs: the picture used is the first frame, and the manifest says so."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from processor.config import DecodeSettings
from processor.pipeline.decode import decode_image
from testkit.images import encode

#: One solid colour per frame, so which frame was decoded is plain from any pixel.
FRAME_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 210), (240, 220, 20)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_first_frame_is_decoded_and_recorded(fmt: str) -> None:
    frames = [Image.new("RGB", (96, 80), colour) for colour in FRAME_COLOURS]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = decode_image(data, DecodeSettings(), name=f"inputs/anim.{fmt.lower()}")
    assert f"first of {len(FRAME_COLOURS)} frames" in decoded.notes
    mean = np.asarray(decoded.image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    distances = [float(np.abs(mean - np.array(c)).max()) for c in FRAME_COLOURS]
    assert distances[0] < 8 and min(distances[1:]) > 100, distances

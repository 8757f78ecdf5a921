"""ICC profiles built in memory, so colour-management tests need no profile files.

``rgb_profile(description, primaries, white, trc)`` writes an ICC v2.1 display profile of the
matrix/TRC kind (what Display P3, Adobe RGB and sRGB profiles are): a description, the media white
point, the red, green and blue colorants (adapted from the profile's white to the D50 connection
space with the Bradford transform, as ICC requires) and one tone curve per channel.
``DISPLAY_P3`` and ``ADOBE_RGB`` are the two that phones and cameras embed most, and ``SRGB`` is
built the same way to check the builder against LittleCMS's own sRGB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

#: CIE xy of D65 (the white of sRGB, Display P3 and Adobe RGB) and XYZ of D50 (ICC's connection space).
D65_XY = (0.3127, 0.3290)
D50_XYZ = (0.9642, 1.0, 0.8249)
#: The Bradford cone-response matrix (chromatic adaptation).
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
#: Entries of each sampled tone curve.
CURVE_POINTS = 1024

Curve = Callable[[np.ndarray], np.ndarray]


def srgb_curve(v: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (encoded 0-1 to linear 0-1): sRGB's and Display P3's."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def gamma_curve(gamma: float) -> Curve:
    return lambda v: v**gamma


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def colorants(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]) -> np.ndarray:
    """3x3: the XYZ (D50-adapted) of full red, green and blue, one per column."""
    p = np.stack([_xyz(xy) for xy in primaries], axis=1)
    scale = np.linalg.solve(p, _xyz(white))
    to_xyz = p * scale  # RGB -> XYZ under the profile's own white
    source, target = BRADFORD @ _xyz(white), BRADFORD @ np.array(D50_XYZ)
    adapt = np.linalg.inv(BRADFORD) @ np.diag(target / source) @ BRADFORD
    return adapt @ to_xyz


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: tuple[float, float, float] | np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(float(v)) for v in xyz)


def _curve_tag(curve: Curve) -> bytes:
    samples = np.clip(curve(np.linspace(0.0, 1.0, CURVE_POINTS)), 0.0, 1.0)
    table = np.rint(samples * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", CURVE_POINTS) + table


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def _text_tag(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def rgb_profile(description: str, primaries: tuple[tuple[float, float], ...], white: tuple[float, float],
                trc: Curve) -> bytes:
    """An ICC v2.1 RGB display profile (see the module docstring)."""
    matrix = colorants(primaries, white)
    curve = _curve_tag(trc)
    tags = [(b"desc", _desc_tag(description)), (b"cprt", _text_tag("No copyright, built for tests")),
            (b"wtpt", _xyz_tag(D50_XYZ)), (b"rXYZ", _xyz_tag(matrix[:, 0])), (b"gXYZ", _xyz_tag(matrix[:, 1])),
            (b"bXYZ", _xyz_tag(matrix[:, 2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # every tag starts on a 4-byte boundary
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + bytes([2, 0x10, 0, 0]) + b"mntr" + b"RGB " + b"XYZ "
              + bytes(12) + b"acsp" + bytes(4) + bytes(4) + bytes(4) + bytes(4) + bytes(8) + struct.pack(">I", 0)
              + b"".join(_s15(v) for v in D50_XYZ) + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


DISPLAY_P3 = rgb_profile("Display P3", ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)), D65_XY, srgb_curve)
ADOBE_RGB = rgb_profile("Adobe RGB (1998)", ((0.640, 0.330), (0.210, 0.710), (0.150, 0.060)), D65_XY,
                        gamma_curve(563 / 256))
SRGB = rgb_profile("sRGB built for tests", ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)), D65_XY, srgb_curve)

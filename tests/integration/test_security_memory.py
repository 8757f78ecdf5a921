"""Peak memory of decoding the decompression bombs, measured as the peak RSS of a fresh process.

Each file is decoded in its own subprocess, which reports its peak RSS (``VmHWM``: the high-water
mark since exec; ``ru_maxrss`` would include the parent's RSS, as the child starts as its fork),
next to two references measured the same way: a small photo (the baseline: imports and a
normal decode) and a large but allowed image (the control: it proves the measurement sees a real
pixel allocation). A bomb must stay within ``BOMB_RSS_MARGIN_MIB`` of the baseline although its
header declares gigabytes. ``python -m tests.integration.test_security_memory`` prints the table for
docs/security.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from testkit.images import encode, photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.corpus import bombs

#: MiB a bomb's decode may add to the baseline's peak RSS (generous: the allowed control adds about 3x this).
BOMB_RSS_MARGIN_MIB = 24
#: Pixels of the control image: 5000x4000 RGB, 76 MiB in Pillow (4 bytes a pixel), allowed by the defaults.
CONTROL_SIZE = (5000, 4000)
#: MiB the control must add at least, or the measurement is not seeing pixel memory at all.
CONTROL_MIN_GROWTH_MIB = 48
#: Pixels: just under the default ``pipeline.decode.max_pixels`` (40,000,000): the most memory one
#: allowed input may take in decode.
AT_LIMIT_SIZE = (8000, 4999)
AT_LIMIT = "at the limit: 8000x4999 PNG (allowed)"
#: MiB decode may add at the pixel limit: the RGB pixels (4 bytes a pixel in Pillow, 153 MiB) and
#: change, not a second copy of them.
AT_LIMIT_MAX_GROWTH_MIB = 200
REPO = Path(__file__).resolve().parents[2]

# Runs in the child: decode one file with the default limits, report the outcome and peak RSS.
_CHILD = """
import json, resource, sys
from processor.config import DecodeSettings
from processor.errors import InvalidInput
from processor.pipeline.decode import decode_image
data = open(sys.argv[1], "rb").read()
try:
    decoded = decode_image(data, DecodeSettings(), name=sys.argv[1])
    outcome = "decoded %dx%d" % decoded.image.size
except InvalidInput as exc:
    outcome = type(exc).__name__
try:  # this process image's own peak: ru_maxrss would also count the parent's RSS (fork, then exec)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "maxrss_kib": peak}))
"""


def measure(data: bytes) -> dict[str, object]:
    """Outcome and peak RSS (KiB, Linux ``VmHWM``) of decoding ``data`` in a fresh interpreter."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as fh:
        fh.write(data)
        fh.flush()
        proc = subprocess.run([sys.executable, "-c", _CHILD, fh.name], capture_output=True, text=True,
                              timeout=HANG_GUARD_S, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def references() -> dict[str, bytes]:
    return {
        "baseline: 640x480 JPEG photo": photo_bytes(640, 480),
        "control: 5000x4000 PNG (allowed)": encode(Image.new("RGB", CONTROL_SIZE, (200, 120, 40)), "PNG"),
        AT_LIMIT: encode(Image.new("RGB", AT_LIMIT_SIZE, (90, 160, 220)), "PNG"),
    }


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, object]]:
    files = {**references(), **bombs()}
    return {name: {**measure(data), "bytes": len(data)} for name, data in files.items()}


def test_the_measurement_sees_pixel_memory(measured) -> None:
    baseline = measured["baseline: 640x480 JPEG photo"]["maxrss_kib"]
    control = measured["control: 5000x4000 PNG (allowed)"]
    assert control["outcome"] == "decoded 5000x4000"
    assert control["maxrss_kib"] - baseline > CONTROL_MIN_GROWTH_MIB * 1024, (baseline, control)


def test_an_image_at_the_pixel_limit_is_decoded_without_a_second_copy(measured) -> None:
    baseline = measured["baseline: 640x480 JPEG photo"]["maxrss_kib"]
    at_limit = measured[AT_LIMIT]
    assert at_limit["outcome"] == "decoded 8000x4999"
    assert (at_limit["maxrss_kib"] - baseline) / 1024 < AT_LIMIT_MAX_GROWTH_MIB, at_limit


@pytest.mark.parametrize("name", sorted(bombs()))
def test_bomb_peak_memory_stays_near_the_baseline(measured, name: str) -> None:
    baseline = measured["baseline: 640x480 JPEG photo"]["maxrss_kib"]
    bomb = measured[name]
    assert bomb["outcome"] in ("ImageTooLarge", "CorruptImage"), bomb
    growth_mib = (bomb["maxrss_kib"] - baseline) / 1024
    assert growth_mib < BOMB_RSS_MARGIN_MIB, f"{name}: +{growth_mib:.1f} MiB over the baseline"


if __name__ == "__main__":  # the table in docs/security.md
    rows = {**references(), **bombs()}
    results = {name: {**measure(data), "bytes": len(data)} for name, data in rows.items()}
    base = results["baseline: 640x480 JPEG photo"]["maxrss_kib"]
    print("| file | size (bytes) | outcome | peak RSS (MiB) | over baseline (MiB) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name, r in results.items():
        rss = r["maxrss_kib"]
        print(f"| {name} | {r['bytes']:,} | {r['outcome']} | {rss / 1024:.1f} | {(rss - base) / 1024:+.1f} |")

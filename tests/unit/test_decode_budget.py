"""The decode budget: slow structures are decoded in a child process that is stopped at its CPU
budget, and every way that child can end is an item's error, never the caller's crash.

No test here depends on how fast this machine is: a bomb's budget is a fraction of a second of CPU
while its cost unbounded is seconds to minutes, and the assertions are on what stopped it (the
child's watchdog, with the CPU it had spent), not on how long the test took.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from processor.config import DecodeSettings
from processor.errors import CorruptImage, DecodeBudgetExceeded, ImageTooLarge, StageFailed
from processor.pipeline import decode as decode_package
from processor.pipeline.decode import DecodeRoute, decode_image, sniff_format, survey
from processor.pipeline.decode import isolated as isolated_module
from processor.pipeline.decode.child import KERNEL_LIMIT_GRACE_S, cpu_budget_s
from processor.pipeline.decode.isolated import DecoderChild
from testkit.images import encode, photo_bytes, photo_image
from tests.decode_bombs import BOMBS, BOUNDED_BY_DESIGN, jpeg_many_scans, tiff_many_ifds

#: CPU seconds: the tiny budget the bombs get here (a floor, and next to nothing per megapixel).
TINY_FLOOR_S = 0.25
TINY = DecodeSettings(min_side=1, cpu_floor_s=TINY_FLOOR_S, cpu_s_per_megapixel=0.05)
#: CPU seconds past its budget a stopped decode may have run: the watchdog looks every 10 ms, the
#: kernel's limit is a whole second later; more would mean neither stopped it.
OVERRUN_S = KERNEL_LIMIT_GRACE_S + 0.5
#: A budget no test reaches: for the tests that end a child from outside.
AMPLE = DecodeSettings(min_side=1, cpu_floor_s=600, cpu_s_per_megapixel=0)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {name: build() for name, build in BOMBS.items()}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_is_routed_to_the_isolated_decoder(bombs: dict[str, bytes], name: str) -> None:
    data = bombs[name]
    assert len(data) < DecodeSettings().max_bytes
    plan = survey(data, sniff_format(data[:512]) or "")
    assert plan.route is DecodeRoute.ISOLATED and plan.reason


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_is_stopped_by_its_cpu_budget(bombs: dict[str, bytes], name: str) -> None:
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(bombs[name], TINY, name=f"inputs/{name}")
    error = caught.value
    # The child's watchdog stopped it (cpu_s is what it had spent then), within bounded work.
    assert error.cpu_s is not None, str(error)
    assert TINY_FLOOR_S <= error.budget_s <= error.cpu_s < error.budget_s + OVERRUN_S, str(error)
    message = str(error)
    assert message.startswith(f"inputs/{name}: decoding this ")
    assert "pipeline.decode.cpu_floor_s 0.25" in message
    assert plan_reason(bombs[name]) in message
    assert "JPEG or PNG" in error.hint and "cpu_s_per_megapixel" in error.hint


def plan_reason(data: bytes) -> str:
    return survey(data, sniff_format(data[:512]) or "").reason


def test_the_budget_grows_with_the_declared_pixels() -> None:
    """Past the header, the budget is the floor plus the rate per megapixel of the declared size."""
    limits = DecodeSettings(cpu_floor_s=TINY_FLOOR_S, cpu_s_per_megapixel=0.1)
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(jpeg_many_scans(), limits, name="scans.jpg")
    side = 2048
    assert caught.value.budget_s == pytest.approx(TINY_FLOOR_S + 0.1 * side * side / 1e6)
    assert f"{side}x{side} JPEG" in str(caught.value)
    assert cpu_budget_s(TINY_FLOOR_S, 0.1, side * side) == pytest.approx(caught.value.budget_s)


#: Frames of the bombs bounded by design: their repeated frames and the real ones.
BOUNDED_FRAMES = {"apng-many-frames": 100_001, "webp-many-frames": 500_002}


@pytest.mark.parametrize("name", sorted(BOUNDED_BY_DESIGN))
def test_many_frames_of_apng_and_webp_cost_only_the_first(name: str) -> None:
    """Only the first frame is decoded, and the frame count comes from a header (APNG) or libwebp's
    demuxer in C (WebP): inside even the tiny budget, wherever the survey sends them."""
    decoded = decode_image(BOUNDED_BY_DESIGN[name](), TINY, name=name)
    assert f"first of {BOUNDED_FRAMES[name]} frames" in decoded.notes, decoded.notes


def test_a_normal_photo_decodes_in_process_and_an_isolated_one_the_same() -> None:
    """Plain files stay in the worker (no cost); the isolated path gives the same pixels."""
    photo = photo_image(160, 120, seed=5)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        assert survey(encode(photo, fmt), fmt).route is DecodeRoute.IN_PROCESS, fmt
    progressive = encode(photo, "JPEG", progressive=True)
    assert survey(progressive, "JPEG").route is DecodeRoute.IN_PROCESS
    for fmt in ("GIF", "TIFF", "AVIF"):
        data = encode(photo, fmt)
        assert survey(data, fmt).route is DecodeRoute.ISOLATED, fmt
        here = decode_package.decode_here(data, fmt, DecodeSettings())
        there = decode_image(data, DecodeSettings(), name=f"x.{fmt}")
        assert there.format == fmt and there.notes == here.notes
        assert there.image.tobytes() == here.image.tobytes(), fmt


def test_limits_are_checked_in_the_child_too() -> None:
    """A GIF declaring 65535x65535 is refused from its header by the isolated decoder."""
    from testkit.images import bad_inputs

    with pytest.raises(ImageTooLarge, match="65535x65535"):
        decode_image(bad_inputs()["gif-bomb-65535"], DecodeSettings(), name="bomb.gif")


def test_the_child_is_reused_and_replaced_after_a_budget_stop() -> None:
    small_gif = encode(photo_image(96, 72), "GIF")
    decode_image(small_gif, DecodeSettings())
    first = isolated_module._POOL._idle[-1].process.pid
    decode_image(small_gif, DecodeSettings())
    assert isolated_module._POOL._idle[-1].process.pid == first  # reused: no start per file
    with pytest.raises(DecodeBudgetExceeded):
        decode_image(tiff_many_ifds(), TINY)
    decode_image(small_gif, DecodeSettings())
    assert isolated_module._POOL._idle[-1].process.pid != first


# --- every end of a child -----------------------------------------------------------------------


def _decode_while(sig: signal.Signals, limits: DecodeSettings = AMPLE) -> BaseException:
    """Start decoding the TIFF bomb in a fresh child, send it ``sig`` once it is busy, and return
    what the decode raised."""
    child = DecoderChild()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            child.decode(tiff_many_ifds(), "TIFF", limits, where="t.tif: ", reason="")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    _wait_until_busy(child.process.pid)
    with contextlib.suppress(ProcessLookupError):  # already ended (a machine slower than the test)
        os.kill(child.process.pid, sig)
    thread.join(timeout=120)
    child.close()
    assert outcome, "the decode neither ended nor raised"
    return outcome[0]


def _wait_until_busy(pid: int) -> None:
    """Until the child has spent some CPU past its start (its imports), or 60 s."""
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return
        if (int(fields[11]) + int(fields[12])) / ticks > 1.0:  # utime + stime
            return
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_a_crashing_decoder_is_the_files_corrupt_image() -> None:
    error = _decode_while(signal.SIGSEGV)
    assert isinstance(error, CorruptImage) and "decoder crashed on this file (SIGSEGV)" in str(error), error


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_a_decoder_killed_from_outside_is_retried_not_final() -> None:
    error = _decode_while(signal.SIGKILL)
    assert isinstance(error, StageFailed) and "SIGKILL" in str(error), error
    assert "retries it later" in error.hint


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_a_stuck_decoder_is_killed_by_the_wall_clock_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that stops computing (here: stopped by a signal) is killed after its wall-clock
    allowance; the error is retryable, since the fault is the machine's, not the file's."""
    monkeypatch.setattr(isolated_module, "WALL_S_PER_CPU_S", 0.0)
    monkeypatch.setattr(isolated_module, "WALL_SLACK_S", 1.0)
    error = _decode_while(signal.SIGSTOP)
    assert isinstance(error, StageFailed) and "made no progress" in str(error), error


def test_a_decoder_ended_by_sigxcpu_is_the_files_budget_error() -> None:
    """SIGXCPU is how the kernel's CPU limit ends a child (the next test shows it does)."""
    error = _decode_while(signal.SIGXCPU)
    assert isinstance(error, DecodeBudgetExceeded) and error.cpu_s is None, error
    assert "by the kernel's CPU limit" in str(error)


#: Runs in a subprocess: a decode's budget armed, the watchdog asleep, and a loop that never ends.
_ENDLESS_DECODE = """
import resource
from processor.pipeline.decode import child
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
child.WATCHDOG_PERIOD_S = 3600.0  # the watchdog sleeps through it: only the kernel can stop this
child.Watchdog(lambda message: None).arm(1, 0.2)
while True:
    pass
"""


def test_the_kernel_cpu_limit_stops_a_decode_that_the_watchdog_does_not() -> None:
    proc = subprocess.run([sys.executable, "-c", _ENDLESS_DECODE], timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGXCPU, proc.stderr[-2000:]


def test_running_out_of_memory_is_retried_not_final(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*_args: object, **_kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(decode_package, "decode_here", no_memory)
    with pytest.raises(StageFailed, match=r"^in\.jpg: decoding the JPEG file ran out of memory") as caught:
        decode_image(photo_bytes(96, 72), DecodeSettings(), name="in.jpg")
    assert isinstance(caught.value.__cause__, MemoryError)

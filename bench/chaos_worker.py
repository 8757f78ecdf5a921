"""``processor`` as the chaos harness runs it: the real CLI plus test-only hooks, set by environment.

``python bench/chaos_worker.py run`` is ``processor run`` with three additions, all off unless their
variable is set; the product code knows nothing of them:

``CHAOS_ENGINE_DELAY_S``
    Seconds of extra compute per input in the ``toon`` engine: a fixed cost, so the harness controls
    how long an item is in flight (a GPU style takes seconds; toon at 128 px takes milliseconds).
``CHAOS_NONCE=1``
    Every engine call adds a random ``chaos_attempt`` value to its variants' parameters, which the
    PNG text chunk and so the bytes carry. Two attempts at one input then never write the same
    bytes (as on a GPU, where diffusion is not bit-reproducible), so a variant overwritten after
    its commit is visible by content, not only by its write time.
``CHAOS_CTL_DIR``
    Hold points. Before a store write the worker looks for ``arm.<point>.<worker>.<folder>`` in this
    folder (``<worker>`` and ``<folder>`` may be ``any``; ``<folder>`` is the first 12 hex digits
    of the sha1 of the output folder). The first worker to rename an arm file away holds: it writes
    ``held.<token>`` (holding the point, worker and key as JSON), logs ``chaos_hold``, and waits
    until ``release.<token>`` exists (at most ``CHAOS_HOLD_MAX_S``). Meanwhile the harness can
    SIGKILL it (a crash exactly between the last variant and the manifest) or SIGSTOP it (a
    zombie). Points:

    - ``create``: a create-if-absent put of a variant or contact sheet;
    - ``overwrite``: an If-Match put of a variant or contact sheet (replacing a leftover);
    - ``commit``: the put of ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import hashlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processor.queue.keys import MANIFEST_NAME

log = logging.getLogger("processor.chaos")

#: Seconds between looks for the release file while holding.
HOLD_POLL_S = 0.05
#: Seconds a hold lasts at most when the harness never releases it (it died, say).
DEFAULT_HOLD_MAX_S = 120.0
#: Hex digits of sha1(output folder) in arm file names.
FOLDER_DIGITS = 12

POINTS = ("create", "overwrite", "commit")


def folder_id(key: str) -> str:
    """The arm-file id of the output folder ``key`` lies in."""
    folder = key.rsplit("/", 1)[0] + "/"
    return hashlib.sha1(folder.encode("utf-8")).hexdigest()[:FOLDER_DIGITS]


def point_of(key: str, *, if_none_match: bool, if_match: str | None, outputs_prefix: str) -> str | None:
    if not key.startswith(outputs_prefix):
        return None
    if key.endswith("/" + MANIFEST_NAME):
        return "commit"
    if if_match is not None:
        return "overwrite"
    if if_none_match:
        return "create"
    return None


class HoldPoints:
    def __init__(self, ctl_dir: Path, worker: str, max_hold_s: float) -> None:
        self.ctl = ctl_dir
        self.worker = worker
        self.max_hold_s = max_hold_s

    def maybe_hold(self, point: str, key: str) -> None:
        folder = folder_id(key)
        for who in (self.worker, "any"):
            for where in (folder, "any"):
                arm = self.ctl / f"arm.{point}.{who}.{where}"
                token = uuid.uuid4().hex[:12]
                try:
                    # rename is atomic: exactly one worker takes an arm.
                    os.rename(arm, self.ctl / f"taken.{token}")
                except FileNotFoundError:
                    continue
                self._hold(point, key, token)
                return

    def _hold(self, point: str, key: str, token: str) -> None:
        info = {"point": point, "key": key, "hold": token, "worker": self.worker, "pid": os.getpid()}
        tmp = self.ctl / f".held.{token}"
        tmp.write_text(json.dumps(info))
        tmp.rename(self.ctl / f"held.{token}")
        log.warning("chaos_hold", extra=info)
        release = self.ctl / f"release.{token}"
        deadline = time.monotonic() + self.max_hold_s
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(HOLD_POLL_S)
        log.warning("chaos_release", extra={"point": point, "key": key, "hold": token})


def install() -> None:
    """Patch the hooks the environment asks for into this process (before the CLI runs)."""
    # SIGUSR1 dumps every thread's stack to stderr: the harness asks for it before it kills a
    # worker that did not stop in time, so the log shows where it was stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    delay = float(os.environ.get("CHAOS_ENGINE_DELAY_S", "0") or 0)
    nonce = os.environ.get("CHAOS_NONCE") == "1"
    if delay or nonce:
        from processor.pipeline import toon

        original_call = toon.ToonEngine.__call__

        def call(self: Any, image: Any, context: Any = None) -> Any:
            if delay:
                time.sleep(delay)
            variants = original_call(self, image, context)
            if nonce:
                attempt = uuid.uuid4().hex[:16]
                variants = [dataclasses.replace(v, parameters=v.parameters | {"chaos_attempt": attempt})
                            for v in variants]
            return variants

        toon.ToonEngine.__call__ = call

    ctl = os.environ.get("CHAOS_CTL_DIR")
    if ctl:
        from processor.store.s3 import S3Store

        holds = HoldPoints(Path(ctl), os.environ.get("CHAOS_WORKER", "w?"),
                           float(os.environ.get("CHAOS_HOLD_MAX_S", DEFAULT_HOLD_MAX_S)))
        outputs = os.environ.get("CHAOS_OUTPUTS_PREFIX", "outputs/")
        original_put = S3Store.put

        def put(self: Any, key: str, body: bytes, **kw: Any) -> Any:
            point = point_of(key, if_none_match=kw.get("if_none_match", False), if_match=kw.get("if_match"),
                             outputs_prefix=outputs)
            if point:
                holds.maybe_hold(point, key)
            return original_put(self, key, body, **kw)

        S3Store.put = put


def main(argv: list[str] | None = None) -> int:
    install()
    from processor.cli.main import main as cli_main

    code = cli_main(argv)
    # From here on only interpreter shutdown runs: the harness compares this event's time with
    # the exit it observes, to tell a slow shutdown from a stuck one.
    log.info("chaos_main_returned", extra={"exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())

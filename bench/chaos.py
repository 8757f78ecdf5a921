"""Fault-injection harness: worker processes against a real SeaweedFS, with crashes, pauses,
an outage and shutdowns, then a check of the promise from the bucket alone.

::

    python bench/chaos.py                 # the full run (a few hundred inputs; minutes)
    python bench/chaos.py --ci            # the short run CI does (tests/chaos/)
    python bench/chaos.py --help

What it does:

1. Starts its own SeaweedFS (``weed server``, credentials enforced) so it can stop and restart it,
   and creates a *versioned* bucket, so every write leaves a version the checker can count.
2. Starts ``--workers`` daemons (``processor run`` through ``bench/chaos_worker.py``, which adds a
   fixed compute delay, a per-attempt nonce in the variants' bytes, and hold points) with short
   claim TTLs (``PROCESSOR_CLAIMS__TTL_S``).
3. Uploads the inputs (good photos and bad files) in batches, one batch before each fault, so every
   fault lands while the workers have work in flight, and injects (order shuffled by ``--seed``):

   - ``kill``: SIGKILL of a random worker at a random moment, then a restart;
   - ``window-kill``: SIGKILL of a worker held between its last variant and its manifest (a hold
     point at the commit; the harness confirms the variants are there and the manifest is not);
   - ``zombie``: a worker held at its commit is SIGSTOPped past its claim TTL until another worker
     has taken the claim over and committed, then SIGCONTed: its commit must be refused;
   - ``outage``: the S3 server stopped for ``--outage-s`` seconds and restarted on the same ports;
     every worker must still be running afterwards;
   - ``term``: SIGTERM with a ``--term-grace-s`` grace period: exit 0 within it, then a restart;
   - ``window-probe``: the known race of a zombie overwriting a variant between its checks and its
     If-Match put, forced step by step with hold points (see docs/reliability.md).

   Among the inputs, ``--hostile`` rounds of hostile bucket state: an input encrypted with a
   customer key (SSE-C) the workers do not have, an input whose sidecar is far over its byte cap
   (both must end with a failure record), and a good input whose claim object was planted with an
   absurd TTL (it must be taken over once ``claims.max_ttl_s`` ran out, then committed).

4. Waits until every input has a result, SIGTERMs every worker (each must exit 0), checks the
   bucket (``bench/chaos_check.py``) and prints the figures. Exit status 0 when the promise held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_check import BucketReport, check_bucket, percentile
from bench.chaos_worker import folder_id
from processor.config import PrefixSettings
from processor.queue.keys import KeyLayout, is_sidecar, safe_path
from testkit.images import bad_inputs, photo_bytes
from testkit.seaweed import S3Server, WeedServer

ROOT = Path(__file__).resolve().parent.parent
WORKER_SCRIPT = ROOT / "bench" / "chaos_worker.py"

#: Seconds to wait for a hold point to be reached after arming it.
HOLD_WAIT_S = 60.0
#: Seconds between looks at the bucket / control folder while waiting.
POLL_S = 0.2
#: Extra seconds, beyond the claim TTL, allowed for another worker to take over and commit.
TAKEOVER_SLACK_S = 45.0
#: Seconds a SIGSTOPped zombie is kept paused past the takeover, so it resumes after the commit.
ZOMBIE_EXTRA_PAUSE_S = 0.5
#: Seconds a worker still running past its SIGTERM grace period gets before the stack dump and SIGKILL.
LATE_EXIT_WAIT_S = 20.0
#: Flags for the harness's own SeaweedFS: a restarted single master elects itself in ~1 s, not 10.
WEED_FLAGS = ("-master.electionTimeout=1s",)

#: Bytes of the hostile oversized sidecar (its cap is 64 KiB).
HOSTILE_SIDECAR_BYTES = 1024 * 1024
#: claims.max_ttl_s of the run, in claim TTLs: the planted absurd claim lasts this long.
HOSTILE_MAX_TTL_TTLS = 3

FAULTS = ("kill", "window-kill", "zombie", "outage", "term", "window-probe")


@dataclass
class Plan:
    inputs: int = 300
    bad: int = 24
    workers: int = 4
    kills: int = 8
    window_kills: int = 3
    zombies: int = 3
    outages: int = 1
    outage_s: float = 15.0
    terms: int = 3
    window_probes: int = 1
    hostile: int = 1
    ttl_s: float = 4.0
    renew_s: float = 1.0
    engine_delay_s: float = 0.25
    term_grace_s: float = 10.0
    image_side: int = 128
    deadline_s: float = 1200.0
    seed: int = 1

    @classmethod
    def ci(cls) -> Plan:
        """The short run CI does: one of each fault, a short outage."""
        return cls(inputs=40, bad=6, workers=3, kills=1, window_kills=1, zombies=1, outages=1, outage_s=3.0,
                   terms=1, window_probes=1, hostile=1, ttl_s=3.0, renew_s=1.0, engine_delay_s=0.2, term_grace_s=10.0,
                   image_side=96, deadline_s=240.0)

    def faults(self) -> list[str]:
        counts = {"kill": self.kills, "window-kill": self.window_kills, "zombie": self.zombies,
                  "outage": self.outages, "term": self.terms, "window-probe": self.window_probes}
        return [name for name, n in counts.items() for _ in range(n)]


PLAN_HELP = {
    "inputs": "good photos to process",
    "bad": "bad files among them (each must end with a failure record)",
    "workers": "worker processes",
    "kills": "SIGKILLs of a random worker at a random moment",
    "window_kills": "SIGKILLs between a worker's last variant and its manifest",
    "zombies": "workers SIGSTOPped at their commit past the claim TTL, then SIGCONTed",
    "outages": "S3 server stops",
    "outage_s": "seconds each outage lasts (plus the server's restart)",
    "terms": "SIGTERMs of a running worker",
    "window_probes": "forced runs of the known overwrite race",
    "hostile": "rounds of hostile state: an SSE-C input, an oversized sidecar, a claim with an absurd TTL",
    "ttl_s": "claim TTL in seconds (PROCESSOR_CLAIMS__TTL_S)",
    "renew_s": "claim renewal period in seconds (PROCESSOR_CLAIMS__RENEW_S)",
    "engine_delay_s": "extra compute seconds per input",
    "term_grace_s": "seconds a SIGTERMed worker has to exit 0",
    "image_side": "pixels: the long side of the generated photos and the toon working size",
    "deadline_s": "seconds the whole run may take before the harness gives up",
    "seed": "seed of the fault order, victims and moments",
}


class ChaosError(RuntimeError):
    """The harness itself could not do what it set out to (not a broken promise)."""


@dataclass
class Slot:
    """One worker position; every restart is a new incarnation with its own id and log."""

    index: int
    incarnation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: Set while the harness itself stops the process (kill, term), so its exit is expected.
    expected_exit: bool = False
    label: str = ""
    log_path: Path | None = None


@dataclass
class Results:
    plan: dict[str, Any]
    faults: Counter = field(default_factory=Counter)
    unexpected_exits: list[str] = field(default_factory=list)
    term_exits: list[dict[str, Any]] = field(default_factory=list)
    final_exits: list[dict[str, Any]] = field(default_factory=list)
    outage_downtime_s: list[float] = field(default_factory=list)
    #: (start, end) of each outage, seconds since the epoch: claims unrenewed through an outage
    #: are taken over after it, which is not a crash's takeover latency.
    outage_windows: list[tuple[float, float]] = field(default_factory=list)
    window_kills_confirmed: int = 0
    zombie_refusals_seen: int = 0
    window_probe: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    drain_s: float = 0.0
    #: The machine's 1-minute load average at the start and the end (the figures depend on it).
    load: list[float] = field(default_factory=list)


class Harness:
    def __init__(self, plan: Plan, workdir: Path, *, verbose: bool = True) -> None:
        self.plan = plan
        self.workdir = workdir
        self.verbose = verbose
        self.rng = random.Random(plan.seed)
        self.ctl = workdir / "ctl"
        self.logs = workdir / "logs"
        for d in (self.ctl, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.weed = WeedServer(workdir / "seaweedfs", extra_flags=WEED_FLAGS)
        self.server: S3Server = self.weed.server
        self.bucket = ""
        self.client: Any = None
        self.slots = [Slot(i) for i in range(plan.workers)]
        self.results = Results(plan=asdict(plan))
        self.layout = KeyLayout(PrefixSettings())
        self.expected: dict[str, str] = {}  # input key -> "good" / "bad"
        #: Inputs uploaded with a customer-provided key (SSE-C) the workers never get.
        self.sse_c_keys: set[str] = set()
        self._started = time.monotonic()

    # ------------------------------------------------------------------ output

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[chaos {time.monotonic() - self._started:6.1f}s] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ setup

    def start(self) -> None:
        self.say(f"starting SeaweedFS in {self.weed.data_dir}")
        self.weed.start()
        self.client = self.server.client(retries={"max_attempts": 10, "mode": "standard"})
        self.bucket = self.server.new_bucket(versioned=True)
        config = self.workdir / "config.yaml"
        config.write_text(
            "store: {kind: s3}\n"
            f"styles: {{toon: {{engine: toon, variants: 2, max_side: {self.plan.image_side}}}}}\n"
            "pipeline: {contact_sheet_height: 64}\n"
            # full_rescan_s: the harness uploads keys in random order, and the daemon's incremental
            # scans only see keys after the last one listed; this run is about faults, not latency.
            "run: {poll_interval_s: 0.5, idle_backoff_max_s: 1.0, full_rescan_s: 2.0, prefetch: 1, upload_queue: 1}\n"
            "log: {format: json}\n"
        )
        self.config = config
        for slot in self.slots:
            self._spawn(slot)
        self.batches = self._make_batches()
        for slot in self.slots:
            self._wait_started(slot)
        self.say(f"{len(self.slots)} workers started")

    def _make_batches(self) -> list[dict[str, bytes]]:
        rng = self.rng
        items: list[tuple[str, bytes]] = []
        side = self.plan.image_side
        for i in range(self.plan.inputs):
            key = f"inputs/toys/{i // 100:02d}/toy-{i:04d}.jpg"
            w, h = (side, side * 3 // 4) if i % 3 else (side * 3 // 4, side)
            items.append((key, photo_bytes(w, h, seed=i)))
            self.expected[key] = "good"
        bad = list(bad_inputs().items())
        for j in range(self.plan.bad):
            name, data = bad[j % len(bad)]
            key = f"inputs/bad/{j:03d}-{name}.{'png' if 'png' in name else 'jpg'}"
            items.append((key, data))
            self.expected[key] = "bad"
        for j in range(self.plan.hostile):
            key = f"inputs/hostile/{j:02d}-sse-c.jpg"
            items.append((key, photo_bytes(side, side, seed=10_000 + j)))
            self.sse_c_keys.add(key)
            self.expected[key] = "bad"
            key = f"inputs/hostile/{j:02d}-huge-sidecar.jpg"
            items.append((key, photo_bytes(side, side, seed=20_000 + j)))
            # Uploaded now, before its photo: a photo listed without its sidecar would be done.
            self.client.put_object(Bucket=self.bucket, Key=key[:-len(".jpg")] + ".json",
                                   Body=b" " * HOSTILE_SIDECAR_BYTES)
            self.expected[key] = "bad"
            key = f"inputs/hostile/{j:02d}-absurd-claim.jpg"
            items.append((key, photo_bytes(side, side, seed=30_000 + j)))
            self.expected[key] = "good"
            # Planted before the input exists: a claim that says it lasts a year.
            self.client.put_object(Bucket=self.bucket, Key=self.layout.for_input(key).claim,
                                   Body=json.dumps({"worker": "planted", "ttl_s": 3.15e7}).encode())
        rng.shuffle(items)
        count = len(self.plan.faults()) + 1
        return [dict(items[i::count]) for i in range(count)]

    def _upload(self, batch: dict[str, bytes]) -> None:
        for key, data in batch.items():
            extra = ({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": os.urandom(32)}
                     if key in self.sse_c_keys else {})
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def _env(self, slot: Slot) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_", "CHAOS_"))}
        env |= {
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PROCESSOR_CONFIG": str(self.config),
            "PROCESSOR_STORE__BUCKET": self.bucket,
            "PROCESSOR_STORE__ENDPOINT_URL": self.server.endpoint_url,
            "PROCESSOR_STORE__REGION": self.server.region,
            "PROCESSOR_CLAIMS__TTL_S": str(self.plan.ttl_s),
            "PROCESSOR_CLAIMS__RENEW_S": str(self.plan.renew_s),
            # The planted absurd claim expires at this cap; short, so the run does not wait an hour.
            "PROCESSOR_CLAIMS__MAX_TTL_S": str(HOSTILE_MAX_TTL_TTLS * self.plan.ttl_s),
            "PROCESSOR_RUN__WORKER_ID": slot.label,
            # Several workers on one host: the default metrics port (9108) would clash.
            "PROCESSOR_METRICS__PORT": "0",
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            "CHAOS_WORKER": slot.label,
            "CHAOS_CTL_DIR": str(self.ctl),
            "CHAOS_ENGINE_DELAY_S": str(self.plan.engine_delay_s),
            "CHAOS_NONCE": "1",
        }
        return env

    def _spawn(self, slot: Slot) -> None:
        slot.incarnation += 1
        slot.label = f"w{slot.index}.{slot.incarnation}"
        slot.log_path = self.logs / f"{slot.label}.log"
        slot.expected_exit = False
        with open(slot.log_path, "wb") as log_file:
            slot.proc = subprocess.Popen([sys.executable, str(WORKER_SCRIPT), "run"], env=self._env(slot),
                                         stdout=subprocess.DEVNULL, stderr=log_file, cwd=self.workdir)

    def _slot_of_pid(self, pid: int) -> Slot:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.pid == pid:
                return slot
        raise ChaosError(f"no worker with pid {pid}")

    # ------------------------------------------------------------------ watching

    def _check_alive(self) -> None:
        """Record and restart workers that exited without the harness asking."""
        for slot in self.slots:
            if slot.proc is not None and not slot.expected_exit and slot.proc.poll() is not None:
                self.results.unexpected_exits.append(f"{slot.label} exited {slot.proc.returncode}")
                self.say(f"UNEXPECTED: {slot.label} exited with {slot.proc.returncode}; restarting")
                self._spawn(slot)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check_alive()
            time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))

    def _wait_for(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self._check_alive()
            time.sleep(POLL_S)
        raise ChaosError(f"timed out after {timeout:.0f}s waiting for {what}")

    def _exists(self, key: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=key).get("KeyCount"))

    def _pending(self) -> int:
        """Inputs without a done marker (LIST calls only, as the workers scan)."""
        done = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                           Prefix=self.layout.done_prefix):
            for obj in page.get("Contents", []):
                parsed = self.layout.parse_done_marker(obj["Key"])
                if parsed:
                    done.add(parsed[0])
        return sum(1 for key in self.uploaded
                   if not is_sidecar(key) and safe_path(self.layout.relpath(key)) not in done)

    # ------------------------------------------------------------------ holds

    def _arm(self, point: str, worker: str = "any", folder: str = "any") -> None:
        (self.ctl / f"arm.{point}.{worker}.{folder}").write_text("")

    def _disarm(self, point: str, worker: str = "any", folder: str = "any") -> None:
        (self.ctl / f"arm.{point}.{worker}.{folder}").unlink(missing_ok=True)

    def _held(self, point: str, folder: str | None = None, worker: str | None = None) -> dict[str, Any] | None:
        for path in sorted(self.ctl.glob("held.*")):
            info = json.loads(path.read_text())
            if info["point"] != point or (folder and folder_id(info["key"]) != folder):
                continue
            if worker and info["worker"] != worker:
                continue
            path.rename(self.ctl / f"seen.{info['hold']}")
            return info
        return None

    def _release(self, info: dict[str, Any]) -> None:
        (self.ctl / f"release.{info['hold']}").write_text("")

    def _wait_hold(self, point: str, timeout: float = HOLD_WAIT_S, folder: str | None = None,
                   worker: str | None = None) -> dict[str, Any]:
        return self._wait_for(f"a worker to hold at {point}", lambda: self._held(point, folder, worker), timeout)

    # ------------------------------------------------------------------ faults

    def run(self) -> Results:
        started = time.monotonic()
        self.results.load.append(os.getloadavg()[0])
        faults = self.plan.faults()
        self.rng.shuffle(faults)
        self.uploaded: list[str] = []
        self.start()
        for i, fault in enumerate(faults):
            self._upload(self.batches[i])
            self.uploaded += list(self.batches[i])
            self.say(f"batch {i + 1}/{len(self.batches)} uploaded ({len(self.batches[i])} inputs); fault: {fault}")
            getattr(self, "fault_" + fault.replace("-", "_"))()
            self.results.faults[fault] += 1
        self._upload(self.batches[-1])
        self.uploaded += list(self.batches[-1])
        self.say(f"last batch uploaded; {len(self.uploaded)} inputs; waiting for every result")
        drain = time.monotonic()
        remaining = self.plan.deadline_s - (drain - started)
        self._wait_for("every input to have a result", lambda: self._pending() == 0, max(remaining, 30.0))
        self.results.drain_s = round(time.monotonic() - drain, 1)
        self.results.load.append(os.getloadavg()[0])
        self._stop_all()
        self.results.wall_s = round(time.monotonic() - started, 1)
        return self.results

    def fault_kill(self) -> None:
        self._sleep(self.rng.uniform(0.2, 1.5))
        slot = self.rng.choice(self.slots)
        self.say(f"SIGKILL {slot.label}")
        self._kill(slot)
        self._restart(slot)

    def _restart(self, slot: Slot) -> None:
        """A new incarnation in the slot; the next fault waits until it runs (as a Deployment's
        replacement pod would be running before the next failure, most of the time)."""
        self._spawn(slot)
        self._wait_started(slot)

    def _wait_started(self, slot: Slot) -> None:
        self._wait_for(f"{slot.label} to start", lambda: any(e.get("event") == "worker_start"
                                                              for e in _events(slot.log_path)), 60.0)

    def _stop_in_time(self, slot: Slot, sent: float) -> dict[str, Any]:
        """Wait for ``slot`` (SIGTERMed at ``sent``) to exit: its exit code and seconds. Past the
        grace period it gets ``LATE_EXIT_WAIT_S`` more (to tell slow from stuck), then a stack
        dump (SIGUSR1) and SIGKILL."""
        exit_: dict[str, Any] = {"worker": slot.label}
        try:
            code = slot.proc.wait(max(0.0, sent + self.plan.term_grace_s + LATE_EXIT_WAIT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            slot.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            slot.proc.kill()
            slot.proc.wait()
            self.say(f"{slot.label} still running {self.plan.term_grace_s + LATE_EXIT_WAIT_S:g}s after SIGTERM; "
                     f"stacks in {slot.log_path}")
            code = None
        seconds = round(time.monotonic() - sent, 2)
        exit_ |= {"exit_code": code, "seconds": seconds, "in_grace": code == 0 and seconds <= self.plan.term_grace_s}
        return exit_

    def _kill(self, slot: Slot) -> None:
        slot.expected_exit = True
        slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait()

    def fault_window_kill(self) -> None:
        self._arm("commit")
        info = self._wait_hold("commit")
        slot = self._slot_of_pid(info["pid"])
        folder = info["key"].rsplit("/", 1)[0] + "/"
        listed = [o["Key"] for o in self.client.list_objects_v2(Bucket=self.bucket, Prefix=folder).get("Contents", [])]
        variants = [k for k in listed if k.endswith(".png")]
        if variants and not any(k.endswith("/manifest.json") for k in listed):
            self.results.window_kills_confirmed += 1
        self.say(f"SIGKILL {slot.label} between its last variant and the manifest of {folder} "
                 f"({len(variants)} variant(s) written, no manifest)")
        self._kill(slot)
        self._restart(slot)

    def fault_zombie(self) -> None:
        self._arm("commit")
        info = self._wait_hold("commit")
        slot = self._slot_of_pid(info["pid"])
        manifest = info["key"]
        self.say(f"SIGSTOP {slot.label} at its commit of {manifest}; waiting for a takeover and commit")
        slot.proc.send_signal(signal.SIGSTOP)
        self._release(info)  # it goes straight to its manifest put when continued
        try:
            self._wait_for(f"another worker to commit {manifest}", lambda: self._exists(manifest),
                           self.plan.ttl_s + TAKEOVER_SLACK_S)
            self._sleep(ZOMBIE_EXTRA_PAUSE_S)
        finally:
            slot.proc.send_signal(signal.SIGCONT)
        input_key = manifest_input(info, self.layout, self.uploaded)
        refused = self._wait_log(slot, lambda e: e.get("event") in ("commit_refused", "claim_lost_skip")
                                 and e.get("key") == input_key, 30.0)
        self.results.zombie_refusals_seen += bool(refused)
        self.say(f"SIGCONT {slot.label}: its commit was {'refused' if refused else 'NOT refused (see logs)'}")

    def fault_outage(self) -> None:
        self._sleep(self.rng.uniform(0.2, 1.0))
        self.say(f"stopping SeaweedFS for {self.plan.outage_s:.0f}s")
        down = time.monotonic()
        down_epoch = time.time()
        self.weed.stop()
        self._sleep(self.plan.outage_s)
        self.weed.start()
        self.results.outage_downtime_s.append(round(time.monotonic() - down, 1))
        self.results.outage_windows.append((down_epoch, time.time()))
        self.say(f"SeaweedFS back after {time.monotonic() - down:.1f}s")

    def fault_term(self) -> None:
        self._sleep(self.rng.uniform(0.2, 1.5))
        slot = self.rng.choice(self.slots)
        # A worker still starting Python has no handler yet (SIGTERM ends it by default; it holds
        # nothing then): the promise is about a running worker.
        self._wait_started(slot)
        self.say(f"SIGTERM {slot.label} (grace {self.plan.term_grace_s:.0f}s)")
        slot.expected_exit = True
        sent = time.monotonic()
        slot.proc.send_signal(signal.SIGTERM)
        self.results.term_exits.append(self._stop_in_time(slot, sent))
        self._restart(slot)

    def fault_window_probe(self) -> None:
        """Force the known race: zombie Z paused before its variant writes; W takes over and holds at
        its commit; Z resumes, finds W's variants, checks, and (unless something stops it) holds
        right before its If-Match overwrite; W commits; Z is released."""
        self._arm("create")
        z_info = self._wait_hold("create")
        z = self._slot_of_pid(z_info["pid"])
        folder = folder_id(z_info["key"])
        manifest = z_info["key"].rsplit("/", 1)[0] + "/manifest.json"
        self.say(f"probe: SIGSTOP {z.label} before its first output of {manifest.rsplit('/', 1)[0]}/")
        z.proc.send_signal(signal.SIGSTOP)
        self._release(z_info)
        record: dict[str, Any] = {"zombie": z.label, "folder": manifest.rsplit("/", 1)[0] + "/"}
        try:
            self._arm("commit", folder=folder)
            w_info = self._wait_hold("commit", timeout=self.plan.ttl_s + TAKEOVER_SLACK_S, folder=folder)
            record["winner"] = w_info["worker"]
            self._arm("overwrite", worker=z.label, folder=folder)
        finally:
            z.proc.send_signal(signal.SIGCONT)
        try:
            z_over = self._wait_for("the zombie to reach its overwrite or give up",
                                    lambda: self._held("overwrite", folder, z.label) or self._gave_up(z, manifest),
                                    30.0)
        finally:
            self._disarm("overwrite", worker=z.label, folder=folder)
        if isinstance(z_over, dict):
            record["zombie_reached_overwrite"] = True
            self._release(w_info)
            self._wait_for(f"{w_info['worker']} to commit", lambda: self._exists(manifest), 30.0)
            self._release(z_over)
            self._sleep(1.0)
        else:
            record["zombie_reached_overwrite"] = False
            record["zombie_outcome"] = z_over
            self._release(w_info)
        self.say(f"probe: {record}")
        self.results.window_probe.append(record)

    def _gave_up(self, slot: Slot, manifest: str) -> str | None:
        input_key = manifest_input({"key": manifest}, self.layout, self.uploaded)
        for event in _events(slot.log_path):
            if event.get("key") == input_key and event.get("event") in ("commit_refused", "claim_lost_skip"):
                return f"{event['event']}: {event.get('reason', '')}".rstrip(": ")
        return None

    def _wait_log(self, slot: Slot, predicate: Any, timeout: float) -> bool:
        try:
            return bool(self._wait_for("a log event", lambda: any(predicate(e) for e in _events(slot.log_path)),
                                       timeout))
        except ChaosError:
            return False

    # ------------------------------------------------------------------ teardown

    def _stop_all(self) -> None:
        for slot in self.slots:
            self._wait_started(slot)
        sent = time.monotonic()
        for slot in self.slots:
            slot.expected_exit = True
            slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            self.results.final_exits.append(self._stop_in_time(slot, sent))

    def close(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGCONT)
                slot.proc.kill()
                slot.proc.wait()
        self.weed.stop()


def manifest_input(info: dict[str, Any], layout: KeyLayout, inputs: list[str]) -> str | None:
    """The input key whose output folder holds ``info['key']``."""
    folder = info["key"].rsplit("/", 1)[0] + "/"
    for key in inputs:
        if layout.for_input(key).output_prefix == folder:
            return key
    return None


def _events(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# ---------------------------------------------------------------------- figures


@dataclass
class LogFigures:
    commits: int = 0
    commit_refused: int = 0
    claim_lost_skipped: int = 0
    takeovers: int = 0
    takeover_age_s: list[float] = field(default_factory=list)
    store_retries: int = 0
    transient_item_errors: int = 0
    scan_failures: int = 0


def log_figures(logs: Path) -> LogFigures:
    figures = LogFigures()
    for path in sorted(logs.glob("*.log")):
        for e in _events(path):
            name = e.get("event")
            if name == "committed":
                figures.commits += 1
            elif name == "commit_refused":
                figures.commit_refused += 1
            elif name == "claim_lost_skip":
                figures.claim_lost_skipped += 1
            elif name == "claim_taken_over":
                figures.takeovers += 1
                figures.takeover_age_s.append(float(e.get("age_s", 0)))
            elif name == "store_retry":
                figures.store_retries += 1
            elif name in ("fetch_failed", "upload_failed"):
                figures.transient_item_errors += 1
            elif name == "scan_failed":
                figures.scan_failures += 1
    return figures


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(plan: Plan, results: Results, report: BucketReport, logs: LogFigures,
          expected: dict[str, str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(rows of figure, value, requirement) and the broken requirements."""
    wrong_good = sorted(k for k, kind in expected.items() if kind == "good" and report.outcome.get(k) == "failed")
    bad_done = sorted(k for k, kind in expected.items() if kind == "bad" and report.outcome.get(k) == "done")
    def in_outage(t) -> bool:
        return any(start - plan.ttl_s <= t.last_renewal_t <= end for start, end in results.outage_windows)

    crash = [t.latency_s for t in report.takeovers if not in_outage(t)]
    outage = [t.latency_s for t in report.takeovers if in_outage(t)]
    p50, p95 = percentile(crash, 50), percentile(crash, 95)
    o50, o95 = percentile(outage, 50), percentile(outage, 95)
    lp50, lp95 = percentile(logs.takeover_age_s, 50), percentile(logs.takeover_age_s, 95)
    term_ok = sum(1 for t in results.term_exits if t["in_grace"])
    final_ok = sum(1 for t in results.final_exits if t["in_grace"])
    exit_s = [t["seconds"] for t in results.term_exits + results.final_exits if t["exit_code"] is not None]
    probe_open = sum(1 for p in results.window_probe if p.get("zombie_reached_overwrite"))
    faults = ", ".join(f"{k} {v}" for k, v in sorted(results.faults.items())) or "none"
    rows = [
        ("inputs (good + bad)", f"{report.inputs} ({sum(1 for v in expected.values() if v == 'good')} + "
                                f"{sum(1 for v in expected.values() if v == 'bad')})", ""),
        ("workers / claim TTL", f"{plan.workers} / {plan.ttl_s:g}s (renew {plan.renew_s:g}s)", ""),
        ("faults injected", faults, ""),
        ("  window kills confirmed (variants, no manifest)",
         f"{results.window_kills_confirmed} of {results.faults['window-kill']}", "all"),
        ("  S3 outage, stop to ready (s)", ", ".join(f"{d:g}" for d in results.outage_downtime_s) or "-", ""),
        ("committed manifests", str(report.committed), ""),
        ("failure records", str(report.failed), ""),
        ("lost inputs", str(len(report.lost)), "0"),
        ("duplicate commits", str(report.duplicate_commits), "0"),
        ("variants changed after commit", str(len(report.changed_after_commit)), "0"),
        ("committed outputs missing", str(len(report.missing_outputs)), "0"),
        ("good inputs with a failure record", str(len(wrong_good)), "0"),
        ("bad inputs with a manifest", str(len(bad_done)), "-"),
        ("duplicate failure records (unconditional put)", str(report.duplicate_failure_records), "-"),
        ("zombie commits refused (logs: commit_refused)", str(logs.commit_refused), ""),
        ("stale attempts dropped (logs: claim_lost_skip)", str(logs.claim_lost_skipped), ""),
        ("  SIGSTOPped zombies whose commit was refused",
         f"{results.zombie_refusals_seen} of {results.faults['zombie']}", "all"),
        ("known window: zombie reached its overwrite", f"{probe_open} of {len(results.window_probe)}", "0"),
        ("claim takeovers (bucket): after a crash or pause / across the outage", f"{len(crash)} / {len(outage)}", ""),
        ("  latency after a crash or pause p50 / p95 (s)", f"{_fmt(p50)} / {_fmt(p95)}", f">= TTL {plan.ttl_s:g}"),
        ("  latency across the outage p50 / p95 (s)", f"{_fmt(o50)} / {_fmt(o95)}", ""),
        ("  takeover age, all, p50 / p95 (s, logs, server clock)", f"{_fmt(lp50)} / {_fmt(lp95)}", ""),
        ("claims won twice (store's If-None-Match raced)", str(len(report.double_claims)), "-"),
        ("claims left at the end", str(report.claims_left), ""),
        ("SIGTERM exits 0 within grace", f"{term_ok} of {len(results.term_exits)}", "all"),
        ("final SIGTERM exits 0 within grace", f"{final_ok} of {len(results.final_exits)}", "all"),
        ("SIGTERM to exit, max (s)", _fmt(max(exit_s) if exit_s else None), f"<= {plan.term_grace_s:g}"),
        ("unexpected worker exits", str(len(results.unexpected_exits)), "0"),
        ("store retries / item transient errors / scan failures",
         f"{logs.store_retries} / {logs.transient_item_errors} / {logs.scan_failures}", ""),
        ("manifest versions / output versions", f"{report.manifest_versions} / {report.output_versions}", ""),
        ("wall time / drain after last fault (s)", f"{results.wall_s:g} / {results.drain_s:g}", ""),
        ("load average at start / end (1 min)", " / ".join(f"{v:.1f}" for v in results.load), ""),
    ]
    broken = list(report.violations)
    if wrong_good:
        broken.append(f"{len(wrong_good)} good input(s) ended with a failure record: {wrong_good[:3]}")
    if term_ok != len(results.term_exits):
        broken.append(f"SIGTERM: {results.term_exits}")
    if final_ok != len(results.final_exits):
        broken.append(f"final SIGTERM: {results.final_exits}")
    if results.unexpected_exits:
        broken.append(f"unexpected worker exits: {results.unexpected_exits}")
    if results.zombie_refusals_seen != results.faults["zombie"]:
        broken.append("a SIGSTOPped zombie's commit was not refused")
    if results.window_kills_confirmed != results.faults["window-kill"]:
        broken.append("a window kill did not land between the last variant and the manifest")
    if probe_open:
        broken.append("known window: a zombie reached an If-Match overwrite of a variant another worker wrote")
    return rows, broken


def print_table(rows: list[tuple[str, str, str]], broken: list[str], out: Any = sys.stdout) -> None:
    width = max(len(r[0]) for r in rows)
    nwidth = max(len(r[2]) for r in [*rows, ("", "", "required")])
    print(f"{'figure':<{width}}  {'required':<{nwidth}}  value", file=out)
    print(f"{'-' * width}  {'-' * nwidth}  -----", file=out)
    for name, value, need in rows:
        print(f"{name:<{width}}  {need:<{nwidth}}  {value}".rstrip(), file=out)
    print(file=out)
    if broken:
        print("PROMISE BROKEN:", file=out)
        for b in broken:
            print(f"  - {b}", file=out)
    else:
        print("promise held: every input has exactly one result; nothing committed was rewritten", file=out)


@dataclass
class Outcome:
    rows: list[tuple[str, str, str]]
    broken: list[str]
    report: BucketReport
    results: Results
    logs: LogFigures


def run_chaos(plan: Plan, workdir: Path, *, verbose: bool = True) -> Outcome:
    harness = Harness(plan, workdir, verbose=verbose)
    try:
        results = harness.run()
        harness.say("checking the bucket")
        report = check_bucket(harness.client, harness.bucket)
    finally:
        harness.close()
    figures = log_figures(harness.logs)
    rows, broken = table(plan, results, report, figures, harness.expected)
    return Outcome(rows, broken, report, results, figures)


def build_parser() -> argparse.ArgumentParser:
    defaults = Plan()
    p = argparse.ArgumentParser(
        prog="python bench/chaos.py",
        description="Run worker processes against a real SeaweedFS while injecting crashes (SIGKILL, also "
        "between the last variant and the manifest), pauses past the claim TTL (SIGSTOP/SIGCONT), an S3 "
        "outage and SIGTERM shutdowns; then check from the bucket's object versions that every input has "
        "exactly one committed manifest or a failure record and that nothing committed was rewritten. "
        "Prints a table of figures; exits 0 when the promise held, 1 when it did not, 2 when the harness "
        "itself failed.",
    )
    p.add_argument("--ci", action="store_true", help="the short run CI does (40 inputs, 3 workers, one of each "
                   "fault, a 3 s outage); other options override it")
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(value), default=None, metavar=type(value).__name__.upper(),
                       help=f"{PLAN_HELP[name]}; default {value} (--ci: {getattr(Plan.ci(), name)})")
    p.add_argument("--workdir", type=Path, help="keep the server data, worker logs and control files here "
                   "(default: a temporary folder, removed afterwards)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = Plan.ci() if args.ci else Plan()
    for name in asdict(plan):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        outcome = run_chaos(plan, workdir, verbose=not args.quiet)
    except ChaosError as exc:
        print(f"chaos harness failed: {exc} (logs in {workdir})", file=sys.stderr)
        return 2
    print_table(outcome.rows, outcome.broken)
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "rows": outcome.rows, "broken": outcome.broken},
                                        indent=2) + "\n")
    if args.workdir is None and not outcome.broken:
        shutil.rmtree(workdir, ignore_errors=True)
    elif outcome.broken:
        print(f"worker logs: {workdir / 'logs'}", file=sys.stderr)
    return 1 if outcome.broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""processor.worker.metrics in process: what a real worker run puts in its registry, the probes' rules
(with an injected clock), the HTTP endpoints, and the input key on every log line of an item.

The whole thing through the command line, against SeaweedFS, is tests/integration/test_metrics_daemon.py.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.cli.compose import build_registry, make_engine
from processor.config import MetricsSettings, StoreSettings
from processor.errors import ConfigError, TransientStoreError
from processor.log import configure_logging
from processor.pipeline.render import EngineRegistry
from processor.queue.claims import ClaimManager
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.metrics import OUTCOMES, MetricsEndpoint, MetricsServer, PrometheusObserver, describe_endpoint
from processor.worker.runner import Worker
from testkit.images import bad_inputs, photo_bytes
from testkit.waits import HANG_GUARD_S, REQUEST_GUARD_S
from tests.unit.test_worker import make_settings

#: Seconds an HTTP request to the local endpoint may take before the test fails.
HTTP_TIMEOUT_S = REQUEST_GUARD_S


def samples(observer: PrometheusObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry as {(name, sorted labels): value}, parsed from the text format."""
    text = generate_latest(observer.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def observed_worker(store, settings, wid: str = "w1", registry=None, **kw) -> tuple[Worker, PrometheusObserver]:
    observer = PrometheusObserver(stall_s=settings.metrics.stall_s)
    worker = Worker(store, settings, registry or build_registry(settings), worker_id=wid, observer=observer, **kw)
    observer.watch(store=store, claims=worker.claims, info=worker.info.model_dump())
    return worker, observer


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; 4xx/5xx are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


# --------------------------------------------------------------------------- a run's numbers


def test_a_run_is_counted_by_outcome_stage_and_backlog(tmp_path):
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    store.put("inputs/cow.jpg", photo_bytes(320, 240))
    store.put("inputs/bear.png", photo_bytes(240, 320, fmt="PNG", seed=1))
    store.put("inputs/page.jpg", bad_inputs()["html-as-jpg"])
    worker, observer = observed_worker(store, settings)
    worker.setup()

    # The first scan sees three inputs waiting; the gauge shrinks as they resolve.
    items = worker._my_items()
    assert value(samples(observer), "processor_backlog_inputs") == 3
    worker.run_pass(items)
    found = samples(observer)
    assert value(found, "processor_backlog_inputs") == 0

    # Every outcome the worker counted, and only those, with the same numbers.
    counted = {o: value(found, "processor_items_total", outcome=o) for o in OUTCOMES}
    assert counted == {o: worker.totals[o] for o in OUTCOMES}
    assert (counted["done"], counted["failed"]) == (2, 1)

    # Stage histograms: all three were downloaded; the HTML page never decoded.
    def count(stage: str) -> float:
        return value(found, "processor_stage_seconds_count", stage=stage)

    assert count("download") == 3
    assert (count("decode"), count("render"), count("encode"), count("upload"), count("commit")) == (2, 2, 2, 2, 2)
    assert value(found, "processor_style_seconds_count", style="toon") == 2
    assert value(found, "processor_stage_seconds_sum", stage="render") > 0
    assert value(found, "processor_scan_seconds_count") == 1

    # Values other objects keep, read at scrape time.
    assert value(found, "processor_store_requests_total") == store.request_count() > 0
    assert value(found, "processor_claim_conflicts_total") == 0
    assert value(found, "processor_worker_info", id="w1", version=worker.info.version, device="cpu") == 1
    assert value(found, "processor_ready") == 1
    assert value(found, "process_resident_memory_bytes") > 0
    # GPU memory only once this process uses CUDA (other tests may have; a toon run never does).
    torch = sys.modules.get("torch")
    uses_cuda = torch is not None and torch.cuda.is_initialized()
    assert any(name.startswith("processor_gpu_") for name, _ in found) == uses_cuda


def test_a_raising_observer_hook_never_ends_a_pass(tmp_path, caplog):
    """Observer hooks run on the stage threads; one that raises is logged and swallowed (a broken
    metrics backend must not stop the work it measures)."""
    from processor.queue.scan import scan
    from processor.worker.metrics import WorkerObserver

    class Broken(WorkerObserver):
        def item(self, outcome, timings=None):
            raise RuntimeError("metrics backend down")

        def heartbeat(self, quiet_s=0.0):
            raise RuntimeError("clock gone")

    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    store.put("inputs/cow.jpg", photo_bytes(320, 240))
    store.put("inputs/page.jpg", bad_inputs()["html-as-jpg"])
    worker = Worker(store, settings, build_registry(settings), worker_id="w1", observer=Broken())
    with caplog.at_level(logging.WARNING, logger="processor.metrics"):
        assert worker.run_once() == 0
    backlog = scan(store, KeyLayout(settings.prefixes))
    assert (backlog.done, backlog.failed, backlog.pending) == (1, 1, [])
    hooks = {r.hook for r in caplog.records if r.getMessage() == "observer_failed"}
    assert hooks == {"item", "heartbeat"}


def test_store_errors_while_claiming_are_counted_like_every_other_outcome(tmp_path):
    """A claim whose create ran out of retries goes through the same finish step as every item:
    the outcome metric counts it (it used to skip the finish step and undercount)."""
    settings = make_settings(tmp_path)

    class Outage(LocalStore):
        def put(self, key, body, **kw):
            if key.startswith(".processor/claims/"):
                raise TransientStoreError(f"{key}: connection refused")
            return super().put(key, body, **kw)

    store = Outage(settings.store.root)
    for i in range(3):
        store.put(f"inputs/t{i}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    worker, observer = observed_worker(store, settings)
    result = worker.run_pass(worker._my_items())
    assert result.outcomes["transient"] == 3
    assert value(samples(observer), "processor_items_total", outcome="transient") == 3
    assert set(result.outcome_of.values()) == {"transient"}


def test_workers_in_one_process_keep_their_own_numbers(tmp_path):
    """A per-worker registry: a second worker neither clashes with nor adds to the first's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_settings = make_settings(tmp_path / "a")
    b_settings = make_settings(tmp_path / "b")
    a_store, b_store = LocalStore(a_settings.store.root), LocalStore(b_settings.store.root)
    for i in range(3):
        a_store.put(f"inputs/a{i}.jpg", photo_bytes(200, 160, seed=i))
    b_store.put("inputs/b.jpg", photo_bytes(200, 160, seed=9))
    a, a_obs = observed_worker(a_store, a_settings, "a")
    b, b_obs = observed_worker(b_store, b_settings, "b")
    for worker in (a, b):
        worker.setup()
        assert worker.run_once() == 0
    assert value(samples(a_obs), "processor_items_total", outcome="done") == 3
    assert value(samples(b_obs), "processor_items_total", outcome="done") == 1


def test_claim_conflicts_and_takeovers_are_exported(tmp_path):
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/held.jpg", photo_bytes(200, 160))
    store.put("inputs/abandoned.jpg", photo_bytes(200, 160, seed=1))
    # Another worker holds one input (a live claim) and abandoned the other (its TTL has passed).
    live = ClaimManager(store, "other", ttl_s=600)
    dead = ClaimManager(store, "dead", ttl_s=0.01)
    for manager, key in ((live, "inputs/held.jpg"), (dead, "inputs/abandoned.jpg")):
        assert manager.acquire(layout.for_input(key).claim, key, store.head(key).etag)
    time.sleep(0.05)

    worker, observer = observed_worker(store, settings)
    worker.setup()
    worker.run_pass(worker._my_items())
    found = samples(observer)
    assert value(found, "processor_claim_conflicts_total") == 1
    assert value(found, "processor_claim_takeovers_total") == 1
    assert value(found, "processor_items_total", outcome="busy") == 1
    assert value(found, "processor_items_total", outcome="done") == 1
    # The held input still waits for its owner.
    assert value(found, "processor_backlog_inputs") == 1


def test_store_retries_are_exported(monkeypatch):
    """A real S3 adapter against a port nobody listens on: every attempt is refused and retried."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    from processor.store.s3 import S3Store

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    store = S3Store.from_settings(StoreSettings(kind="s3", bucket="b", endpoint_url=f"http://127.0.0.1:{closed_port}",
                                                region="us-east-1", max_attempts=3, max_backoff_s=0.01))
    observer = PrometheusObserver(stall_s=60)
    observer.watch(store=store)
    with pytest.raises(TransientStoreError):
        store.head("inputs/x.jpg")
    assert value(samples(observer), "processor_store_retries_total") == 2


@pytest.mark.gpu
def test_gpu_memory_is_exported_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    found = samples(PrometheusObserver(stall_s=60))
    assert value(found, "processor_gpu_memory_allocated_bytes", device="cuda:0") >= block.numel()
    assert value(found, "processor_gpu_memory_max_allocated_bytes", device="cuda:0") >= block.numel()


# --------------------------------------------------------------------------- probes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_and_readiness_rules():
    clock = FakeClock()
    observer = PrometheusObserver(stall_s=60, clock=clock)
    # Loading models can take minutes: alive, not ready.
    clock.now += 3600
    assert observer.health()[0] and "setup" in observer.health()[1]
    assert observer.ready() == (False, "not ready: loading models (setup)")

    observer.setup_done()
    assert observer.ready() == (False, "not ready: no scan yet")
    observer.scanned(pending=5, seconds=0.1)
    assert observer.ready() == (True, "ready")

    # Progress keeps it alive; silence past stall_s is a wedged worker.
    clock.now += 59
    assert observer.health()[0]
    clock.now += 2
    ok, detail = observer.health()
    assert not ok and "no progress for 61s" in detail and "metrics.stall_s=60" in detail

    # An announced idle wait is not a stall, but one past its announced end is.
    observer.heartbeat(quiet_s=300)
    clock.now += 300 + 59
    assert observer.health()[0]
    clock.now += 2
    assert not observer.health()[0]
    observer.item("done")
    assert observer.health()[0]

    observer.scan_failed("TransientStoreError: connection refused")
    assert observer.ready() == (False, "not ready: store unreachable (TransientStoreError: connection refused)")
    observer.scanned(pending=0, seconds=0.1)
    observer.stopping()
    assert observer.ready() == (False, "not ready: stopping")
    clock.now += 10_000  # finishing the last item after SIGTERM is not a stall
    assert observer.health() == (True, "stopping")


def test_backlog_gauge_follows_full_and_incremental_scans():
    observer = PrometheusObserver(stall_s=60)
    backlog = lambda: observer.registry.get_sample_value("processor_backlog_inputs")  # noqa: E731
    observer.scanned(pending=5, seconds=0.1)  # a full scan counts every pending input
    observer.item("done")
    assert backlog() == 4
    observer.scanned(pending=2, seconds=0.1, full=False)  # an incremental one adds the new inputs
    assert backlog() == 6
    observer.scanned(pending=3, seconds=0.1)  # the next full scan replaces the running count
    assert backlog() == 3


class GatedEngine:
    """A real toon engine whose setup() waits for the test: models that take a while to load."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate
        self.style_name, self.engine = inner.style_name, inner.engine

    def setup(self) -> None:
        assert self.gate.wait(30), "the test never opened the gate"
        self.inner.setup()

    def __call__(self, image, context=None):
        return self.inner(image)

    def describe(self):
        return self.inner.describe()


def test_endpoints_answer_before_during_and_after_setup(tmp_path):
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    store.put("inputs/cow.jpg", photo_bytes(320, 240))
    gate = threading.Event()
    registry = EngineRegistry(settings.styles, lambda name, style: GatedEngine(make_engine(name, style), gate))
    worker, observer = observed_worker(store, settings, registry=registry)
    server = MetricsServer(observer, "127.0.0.1", 0)  # 0: any free port (MetricsEndpoint reads 0 as off)
    base = f"http://127.0.0.1:{server.port}"
    setup = threading.Thread(target=worker.setup)
    try:
        setup.start()
        status, _, body = get(base + "/readyz")
        assert (status, body.strip()) == (503, "not ready: loading models (setup)")
        assert get(base + "/healthz")[0] == 200

        gate.set()
        setup.join(10)
        assert worker.run_once() == 0
        assert get(base + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
        assert get(base + "/healthz")[0] == 200
        status, ctype, text = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'processor_items_total{outcome="done"} 1.0' in text
        assert get(base + "/nothing-here")[0] == 404

        # A second server on the same port is a configuration problem that names the key.
        with pytest.raises(ConfigError, match=r"metrics\.port.*free port, or 0"):
            MetricsServer(observer, "127.0.0.1", server.port)
        assert describe_endpoint(MetricsSettings(host="127.0.0.1", port=server.port))[0] == "warn"
    finally:
        gate.set()
        server.close()
    assert describe_endpoint(MetricsSettings(port=0)) == ("ok", "off (metrics.port: 0)")
    off = MetricsEndpoint(MetricsSettings(port=0))
    assert off.server is None
    off.close()


# --------------------------------------------------------------------------- logs


class CrashingEngine:
    """An engine with a bug: render wraps it into StageFailed and logs ``stage_failed``."""

    engine = "toon"

    def __init__(self, style_name: str) -> None:
        self.style_name = style_name

    def setup(self) -> None:
        pass

    def __call__(self, image, context=None):
        raise RuntimeError("a bug in the engine")

    def describe(self):
        return {}


def test_every_log_line_of_an_item_carries_its_input_key(tmp_path):
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"styles": {**settings.styles, "broken": settings.styles["toon"]},
                                           # One attempt each, no breaker: this test is about the log lines.
                                           "run": settings.run.model_copy(update={"styles": ["toon", "broken"],
                                                                                  "max_attempts": 1,
                                                                                  "max_consecutive_failures": 0})})
    store = LocalStore(settings.store.root)
    for i in range(3):
        store.put(f"inputs/t{i}.jpg", photo_bytes(200, 160, seed=i))
    store.put("inputs/page.jpg", bad_inputs()["html-as-jpg"])

    def factory(name, style):
        return CrashingEngine(name) if name == "broken" else make_engine(name, style)

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("processor").level)
    stream = io.StringIO()
    try:
        configure_logging("DEBUG", "json", stream=stream)
        worker = Worker(store, settings, EngineRegistry(settings.styles, factory), worker_id="w1")
        worker.setup()
        assert worker.run_once() == 0
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("processor").setLevel(saved[2])

    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    crashes = [e for e in events if e["event"] == "stage_failed"]
    # render.py logs the crash without naming the input; the bound key names it.
    assert sorted(e["key"] for e in crashes) == [f"inputs/t{i}.jpg" for i in range(3)]
    assert all("RuntimeError" in e["exception"] for e in crashes)
    failures = [e for e in events if e["event"] == "input_failed"]
    assert len(failures) == 4 and all(e["key"].startswith("inputs/") for e in failures)
    # The worker-level lines after the pass name no input (no key left over from the last item).
    for e in events:
        if e["event"] in ("scanned", "pass_done"):
            assert "key" not in e, e


def test_metrics_never_import_torch():
    """A toon-only worker stays free of torch: neither the hooks nor a scrape import it."""
    code = (
        "import sys\n"
        "from prometheus_client import generate_latest\n"
        "from processor.worker.metrics import PrometheusObserver\n"
        "import processor.worker.runner\n"
        "generate_latest(PrometheusObserver(stall_s=60).registry)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr

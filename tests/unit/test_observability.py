"""Observability: the API's request metrics (by route template and status, bounded however many
jobs there are) and the backlog's age; tracing with OpenTelemetry's SDK (its in-memory exporter):
the worker's item spans, the trace id in the manifest, the failure record and the log lines, the
API's request spans; and, with tracing off, no OpenTelemetry import and no span at all."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from processor.api.app import create_app
from processor.api.http_metrics import ApiMetrics
from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import ConfigError
from processor.log import ItemKeyFilter, JsonFormatter
from processor.manifest import FailureRecord, Manifest
from processor.queue.jobs import BacklogCount
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.tracing import NO_TRACING, OtelTracer, build_tracer
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S

TOKEN = "token-1"


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"]}, pipeline={"contact_sheet_height": 32})


@pytest.fixture
def exported() -> tuple[OtelTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracer(provider), exporter


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hex_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


# --------------------------------------------------------------------------- the API's metrics


def test_requests_are_counted_and_timed_by_route_template_and_status(settings) -> None:
    app = create_app(settings, LocalStore(settings.store.root), keys=[TOKEN])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app, base_url=OPEN_BASE_URL) as http:
        for n in range(25):  # 25 jobs that do not exist: one route, one label value
            assert http.get(f"/v1/jobs/job-{n}", headers=auth).status_code == 404
        assert http.get("/v1/jobs", headers=auth).status_code == 200
        assert http.get("/v1/jobs").status_code == 401
        assert http.get("/no/such/page").status_code == 404
        text = http.get("/metrics").text
    counted = dict(re.findall(r'^processor_api_requests_total\{(.*?)\} (\S+)$', text, re.M))
    assert counted['method="GET",route="/v1/jobs/{job}",status="404"'] == "25.0"
    assert counted['method="GET",route="/v1/jobs",status="200"'] == "1.0"
    assert counted['method="GET",route="/v1/jobs",status="401"'] == "1.0"
    assert counted['method="GET",route="unmatched",status="404"'] == "1.0"
    assert not any("job-" in labels for labels in counted)  # raw paths never become label values
    assert re.search(r'^processor_api_request_duration_seconds_count\{method="GET",route="/v1/jobs/\{job\}",'
                     r'status="404"\} 25\.0$', text, re.M)
    assert re.search(r'^processor_api_request_duration_seconds_bucket\{le="300\.0",method="GET",'
                     r'route="/v1/jobs",status="200"\} 1\.0$', text, re.M)


def test_the_oldest_pending_age_comes_with_the_backlog_count() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)

    class Backlog:
        calls = 0

        def backlog(self) -> BacklogCount:
            Backlog.calls += 1
            return BacklogCount(3, 1, now - timedelta(seconds=90))

    metrics = ApiMetrics(Backlog(), now=lambda: now)
    text = metrics.render("")[0].decode()
    assert "processor_oldest_pending_age_seconds 90.0" in text and "processor_pending_inputs 3.0" in text
    metrics.render("")
    assert Backlog.calls == 1  # one listing serves the count and the age, cached for scrapes

    class Empty:
        def backlog(self) -> tuple[int, int]:
            return 0, 0

    assert "processor_oldest_pending_age_seconds 0.0" in ApiMetrics(Empty()).render("")[0].decode()


# --------------------------------------------------------------------------- tracing: the worker


def test_each_item_is_one_trace_whose_id_is_in_its_records_and_log_lines(settings, exported) -> None:
    tracer, exporter = exported
    store = LocalStore(settings.store.root)
    store.put("inputs/good.jpg", photo_bytes(90, 70))
    store.put("inputs/bad.png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ItemKeyFilter())
    logger = logging.getLogger("processor")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        worker = Worker(store, settings, build_registry(settings), worker_id="w-trace", tracer=tracer)
        worker.setup()
        assert worker.run_once() == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    spans = exporter.get_finished_spans()
    items = {s.attributes["processor.key"]: s for s in by_name(spans, "item")}
    assert set(items) == {"inputs/good.jpg", "inputs/bad.png"}
    assert items["inputs/good.jpg"].attributes["processor.outcome"] == "done"
    assert items["inputs/bad.png"].attributes["processor.outcome"] == "failed"
    good = items["inputs/good.jpg"]
    children = [s for s in spans if s.parent is not None and s.parent.span_id == good.context.span_id]
    assert [s.name for s in sorted(children, key=lambda s: s.start_time)] == [
        "claim", "download", "decode", "render", "upload", "commit"]
    assert {hex_id(s) for s in children} == {hex_id(good)}
    assert by_name(spans, "scan") and all(s.parent is None for s in by_name(spans, "scan"))
    bad = items["inputs/bad.png"]
    assert [s.status.status_code.name for s in spans if s.name == "decode" and hex_id(s) == hex_id(bad)] == ["ERROR"]
    # The records name their trace.
    keys = KeyLayout(settings.prefixes)
    manifest = Manifest.model_validate_json(store.get(keys.for_input("inputs/good.jpg").manifest).body)
    failure = FailureRecord.model_validate_json(store.get(keys.for_input("inputs/bad.png").failure).body)
    assert manifest.trace_id == hex_id(good) and failure.trace_id == hex_id(bad)
    # Log lines written inside the item's spans carry its trace id.
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    committed = [e for e in events if e["event"] == "committed"]
    assert committed and committed[0]["trace_id"] == hex_id(good)
    assert any(e.get("trace_id") == hex_id(bad) and e["event"] == "input_failed" for e in events)


def test_with_tracing_off_nothing_imports_opentelemetry(tmp_path: Path) -> None:
    """A worker's whole run, tracing off: no OpenTelemetry module is ever imported."""
    code = (
        "import sys\n"
        "from processor.cli.compose import build_registry\n"
        "from processor.config import load_settings\n"
        "from processor.store.local import LocalStore\n"
        "from processor.tracing import build_tracer\n"
        "from processor.worker.runner import Worker\n"
        "from testkit.images import photo_bytes\n"
        f"s = load_settings(None, store={{'kind': 'local', 'root': {str(tmp_path)!r}}}, run={{'styles': ['toon']}},"
        " styles={'toon': {'engine': 'toon', 'variants': 1, 'max_side': 64}})\n"
        "store = LocalStore(s.store.root)\n"
        "store.put('inputs/a.jpg', photo_bytes(160, 120))\n"
        "w = Worker(store, s, build_registry(s), worker_id='w', tracer=build_tracer(s.tracing, 'worker'))\n"
        "w.setup()\n"
        "assert w.run_once() == 0 and w.totals['done'] == 1\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tracing_off_is_the_default_and_costs_no_span(settings) -> None:
    assert settings.tracing.enabled is False
    tracer = build_tracer(settings.tracing, "worker")
    assert tracer is NO_TRACING
    with tracer.span("render", key="x") as span:
        assert span.trace_id is None
    assert tracer.start("item").trace_id is None


def test_tracing_on_without_the_extra_says_what_to_install(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the otel extra were absent
    on = settings.tracing.model_copy(update={"enabled": True})
    with pytest.raises(ConfigError, match=r"toy-cartoonizer\[otel\]"):
        build_tracer(on, "worker")


def test_tracing_on_builds_an_sdk_tracer(settings) -> None:
    tracer = build_tracer(settings.tracing.model_copy(update={"enabled": True, "exporter": "console"}), "api")
    try:
        assert isinstance(tracer, OtelTracer) and tracer.enabled
        with tracer.span("scan") as span:
            assert span.trace_id is not None and len(span.trace_id) == 32
    finally:
        tracer.close()


# --------------------------------------------------------------------------- tracing: the API


def test_each_request_is_a_server_span_named_by_its_route(settings, exported) -> None:
    tracer, exporter = exported
    app = create_app(settings, LocalStore(settings.store.root), keys=[TOKEN], tracer=tracer)
    with TestClient(app, base_url=OPEN_BASE_URL) as http:
        assert http.get("/v1/jobs/job-1", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        assert http.get("/v1/jobs").status_code == 401
    spans = exporter.get_finished_spans()
    named = {(s.name, s.attributes["http.response.status_code"]) for s in spans}
    assert named == {("GET /v1/jobs/{job}", 404), ("GET /v1/jobs", 401)}
    assert all(s.kind is SpanKind.SERVER and s.attributes["http.request.method"] == "GET" for s in spans)
    assert {s.attributes["http.route"] for s in spans} == {"/v1/jobs/{job}", "/v1/jobs"}

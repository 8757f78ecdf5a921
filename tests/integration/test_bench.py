"""Smoke runs of the benchmarks under ``bench/`` with small sizes: they run end to end on the CPU
against the real SeaweedFS and print a report that parses. Their speed is not checked here (the
machine running CI is not the machine the figures are about); their correctness checks are: the
overlap run must finish every input, the scan pass must be a no-op whose construction matches a
real worker run, and the request count is a property of the code, not of the machine.
The GPU benchmark's CPU smoke run is ``tests/models/test_bench_gpu.py`` (it needs the sd extra).
"""

from __future__ import annotations

import json

import pytest

from bench import overlap
from bench import scan as scan_bench
from bench.common import parse_report


def test_overlap_smoke(s3_server, capsys) -> None:
    results = overlap.main(["--items", "6", "--stage-ms", "20", "--size", "128", "--variants", "2",
                            "--variant-side", "64"], server=s3_server)
    printed = parse_report(capsys.readouterr().out)
    for key in ("processor_ratio", "naive_ratio", "processor_rss_peak_mib", "speedup_processor_over_naive"):
        assert float(printed[key]) > 0
    assert results["items"] == 6
    # Each ratio is the stage's busy time over wall time: it cannot exceed 1.
    assert 0 < results["processor_ratio"] <= 1 and 0 < results["naive_ratio"] <= 1


def test_overlap_help_explains_the_figures(capsys) -> None:
    with pytest.raises(SystemExit):
        overlap.main(["--help"])
    text = capsys.readouterr().out
    assert "--items" in text and "--stage-ms" in text and "--size" in text and "0.9" in text


def test_scan_smoke_local_and_s3(s3_server, capsys) -> None:
    results = scan_bench.main(["--inputs", "25", "--verify", "2", "--json"], server=s3_server)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(results))
    # One listing of inputs and one of done markers (each one page at this size).
    assert results["local_requests"] == 2 and results["s3_requests"] == 2
    # The daemon: the same two listings plus the HEAD of the rescan hint; an idle incremental scan
    # is that HEAD and one LIST after the mark; a hint makes the next scan full again (and is
    # read once: a GET).
    for store in ("local", "s3"):
        assert (results[f"{store}_daemon_full_requests"], results[f"{store}_daemon_incremental_requests"],
                results[f"{store}_daemon_hinted_full_requests"]) == (3, 2, 4)


def test_scan_pages_scale_with_inputs_not_per_input(s3_server, monkeypatch) -> None:
    """With 3-key pages, 25 done inputs take ceil(25/3) pages of inputs and of done markers."""
    import processor.store.s3 as s3

    monkeypatch.setattr(s3, "LIST_PAGE_KEYS", 3)
    results = scan_bench.main(["--inputs", "25", "--verify", "1", "--store", "s3", "--json"], server=s3_server)
    assert results["s3_requests"] == 2 * 9
    assert (results["s3_daemon_full_requests"], results["s3_daemon_incremental_requests"]) == (2 * 9 + 1, 2)


def test_startup_smoke_the_toon_quickstart_never_imports_torch(capsys) -> None:
    from bench import startup

    results = startup.main(["--photos", "2", "--rounds", "1", "--size", "160"])
    printed = parse_report(capsys.readouterr().out)
    assert printed["lazy_torch_loaded"] == "False" and results["lazy_torch_loaded"] is False
    assert results["lazy_startup_s"] > 0 and results["lazy_peak_rss_mib"] > 0


def test_api_bench_smoke(s3_server, capsys) -> None:
    from bench import api as api_bench

    results = api_bench.main(["--store", "both", "--clients", "2", "--requests", "6", "--e2e", "2",
                              "--variants", "1", "--side", "96"], server=s3_server)
    printed = parse_report(capsys.readouterr().out)
    for kind in ("local", "s3"):
        for what in ("store_put", "store_get", "jobqueue_submit", "jobqueue_state", "api_post", "api_get"):
            assert float(printed[f"{kind}_{what}_p99_ms"]) >= float(printed[f"{kind}_{what}_p50_ms"]) > 0
    assert results["prototype_images_per_s"] > 0 and results["queue_images_per_s"] > 0
    assert results["queue_p99_s"] >= results["queue_p50_s"] > 0
    queue_parts = [results[f"queue_cpu_s_per_job_{role}"] for role in ("bench", "api", "worker", "compute")]
    assert min(queue_parts) >= 0 and results["queue_cpu_s_per_job_total"] == pytest.approx(sum(queue_parts))
    assert results["queue_cpu_s_per_job_api"] + results["queue_cpu_s_per_job_worker"] > 0
    # The prototype's handler runs in its own process: its CPU is the server's, not the clients'.
    assert results["prototype_cpu_s_per_job_server"] > 0 and results["prototype_cpu_s_per_job_bench"] >= 0
    assert results["prototype_cpu_s_per_job_total"] == pytest.approx(
        results["prototype_cpu_s_per_job_server"] + results["prototype_cpu_s_per_job_bench"])


def test_bounded_reads_smoke_local(capsys) -> None:
    from bench import bounded_reads

    assert bounded_reads.main(["--mib", "2", "--store", "local", "--files", "20"]) == 0
    report = parse_report(capsys.readouterr().out)
    assert "local, 2 MiB: get max_bytes=64 KiB (now)" in report
    assert report["local: next list, new process (hash from xattr)"].endswith(" 0 hashed")
    assert report["local: first list of 20 dropped-in files (64 KiB)"].endswith(" 20 hashed")


def test_wake_smoke(capsys) -> None:
    """The idle daemon of the shipped settings picks up an API job and a dropped photo; the figures
    parse (their size is the machine's, checked by tests/test_wake.py with its own margins)."""
    from bench import wake

    results = wake.main(["--idle-s", "1"])
    printed = parse_report(capsys.readouterr().out)
    for key in ("api_submit_to_running_s", "api_submit_to_done_less_compute_s", "drop_in_to_running_s",
                "idle_requests_per_hour"):
        assert float(printed[key]) >= 0 and key in results
    assert results["api_submit_to_running_s"] <= results["api_submit_to_done_s"]


def test_cpu_pool_smoke(capsys) -> None:
    from bench import cpu_pool

    # A progress period longer than any item: the requests per item are then the protocol's alone,
    # not a count of how many progress periods a loaded machine let pass.
    results = cpu_pool.main(["--inputs", "4", "--processes", "2", "--side", "96", "--variants", "1",
                             "--progress-s", "3600"])
    printed = parse_report(capsys.readouterr().out)
    assert float(printed["processes_over_one_slot"]) > 0
    # The same work either way: every input done, with the same store requests per item.
    assert results["one_slot_requests_per_item"] == results["processes_requests_per_item"]


def test_api_bench_diffusion_smoke(tmp_path, capsys) -> None:
    """Part 2 with a diffusion model (``--model``: here the tiny one): both designs load it through
    the production path and answer every request (the prototype's lock keeps its pipeline to one
    request at a time; the queue's worker may render the requests waiting together)."""
    from bench import api as api_bench
    from testkit.models.sd import build_sd

    model = build_sd(tmp_path / "tiny-sd")
    results = api_bench.main(["--store", "none", "--clients", "3", "--e2e", "3", "--style", "sd", "--model",
                              str(model), "--sd-steps", "3", "--sd-size", "64", "--variants", "1", "--side", "96",
                              "--batch-inputs", "3"])
    parse_report(capsys.readouterr().out)
    assert results["style"] == "sd" and results["queue_batch_inputs"] == 3
    assert results["prototype_images_per_s"] > 0 and results["queue_images_per_s"] > 0
    assert results["breakdown_compute_s"] > 0

"""Smoke run of ``bench/decode_budget.py`` at a small size: it runs end to end and reports each
format's route and ratios. Its speed is not checked here (CI is not the machine the figures are
about); the routes are a property of the code."""

from __future__ import annotations

from bench import decode_budget
from bench.common import parse_report


def test_decode_budget_bench_smoke(capsys) -> None:
    results = decode_budget.main(["--width", "160", "--height", "120", "--rounds", "1"])
    printed = parse_report(capsys.readouterr().out)
    assert printed["jpeg_route"] == results["jpeg_route"] == "in-process"
    assert results["png_route"] == results["webp_route"] == results["jpeg_progressive_route"] == "in-process"
    assert results["avif_route"] == "isolated"
    for name in ("jpeg", "jpeg_progressive", "png", "webp", "avif"):
        assert float(printed[f"{name}_ratio"]) > 0 and float(printed[f"{name}_survey_ms"]) >= 0
    for name in ("jpeg", "png", "webp"):
        assert float(printed[f"{name}_isolated_ratio"]) > 0

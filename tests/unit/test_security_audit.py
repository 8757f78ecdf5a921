"""The dependency audit's policy (scripts/audit_deps.py) on pip-audit reports of known shape.

The audit itself needs PyPI and runs in CI (``.ci/run``); these tests pin what it concludes:
direct dependencies fail, transitive ones warn, listed advisories are skipped with their reason,
and a report with packages that could not be looked up is never taken for a clean one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_deps.py"
_spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)


def _dep(name: str, version: str, *vulns: dict, skip: str | None = None) -> dict:
    entry = {"name": name, "version": version, "vulns": list(vulns)}
    if skip:
        entry = {"name": name, "skip_reason": skip}
    return entry


def _vuln(vid: str, *fixes: str, aliases: tuple[str, ...] = ()) -> dict:
    return {"id": vid, "fix_versions": list(fixes), "aliases": list(aliases), "description": "..."}


def test_direct_dependencies_come_from_pyproject() -> None:
    direct = audit.direct_dependencies()
    assert {"pillow", "boto3", "pillow-heif", "torch", "pip-audit", "ibm-cos-sdk"} <= direct
    assert "urllib3" not in direct  # transitive


def test_direct_findings_fail_transitive_ones_warn_ignored_ones_are_skipped() -> None:
    report = {"dependencies": [
        _dep("Pillow", "10.0.0", _vuln("PYSEC-1", "10.3.0")),
        _dep("urllib3", "1.26.0", _vuln("GHSA-2", "1.26.19")),
        _dep("torch", "2.3.0", _vuln("GHSA-3", aliases=("CVE-2025-1",))),
        _dep("numpy", "2.0.0"),
    ]}
    failing, warnings, ignored = audit.classify(report, {"pillow", "torch", "numpy"},
                                                {"CVE-2025-1": "no fixed release yet"})
    assert failing == ["Pillow 10.0.0: PYSEC-1 (fixed in: 10.3.0)"]
    assert warnings == ["urllib3 1.26.0: GHSA-2 (fixed in: 1.26.19)"]
    assert ignored == ["torch 2.3.0: GHSA-3 (fixed in: no fix released): no fixed release yet"]


def test_packages_that_could_not_be_looked_up_make_the_audit_inconclusive() -> None:
    report = {"dependencies": [
        _dep("pillow", "13.0.0"),
        _dep("boto3", "1.44.8", skip="Dependency not found on PyPI and could not be audited: boto3 (1.44.8)"),
        _dep("toy-cartoonizer", "0.1", skip="Dependency not found on PyPI and could not be audited"),
    ]}
    problem = audit.unaudited(report)
    assert problem.startswith("1 of 3 packages could not be audited") and "boto3" in problem
    report["dependencies"].pop(1)
    assert audit.unaudited(report) == ""  # our own package is never on PyPI: not a lookup failure

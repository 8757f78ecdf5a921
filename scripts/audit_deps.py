"""Audit the installed dependency set for known vulnerabilities (pip-audit, PyPI's advisory data).

Policy:
- a vulnerability in a *direct* dependency (``pyproject.toml``: dependencies and every extra)
  fails, unless its ID is in ``IGNORED`` below with the reason (only for advisories with no fix);
- a vulnerability in a transitive dependency is printed as a warning (we do not pin those);
- an *inconclusive* audit is not a clean one: when pip-audit fails or cannot look packages up
  (it then reports them as "skipped" and, by itself, still exits 0), the audit is retried once,
  and if it is still inconclusive this script exits 3 so a network hiccup never reads as "no
  vulnerabilities". ``AUDIT_UNAVAILABLE=warn`` downgrades that to a warning, for environments whose
  package index is a mirror without PyPI's per-version JSON API (pip-audit's data source).

Usage: ``python scripts/audit_deps.py`` (CI runs it from ``.ci/run``). Exit 0 clean, 1 findings,
3 inconclusive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip-audit's own dependency provides the same parser
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
#: Advisory IDs we accept for now, each with why (only advisories that have no fixed release).
IGNORED: dict[str, str] = {}
#: Seconds to wait before the one retry (lets a transient index or network failure pass).
RETRY_AFTER_S = 10.0
#: Seconds one pip-audit run may take (it makes one request per installed package).
AUDIT_TIMEOUT_S = 900
EXIT_FINDINGS = 1
EXIT_INCONCLUSIVE = 3


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {normalise(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}


def run_audit() -> tuple[dict | None, str]:
    """One pip-audit run over this interpreter's environment: (report, problem or "")."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, f"pip-audit ran past {AUDIT_TIMEOUT_S} s"
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None, f"pip-audit exited {proc.returncode} without a report: {proc.stderr.strip()[-1500:]}"
    return report, unaudited(report)


def unaudited(report: dict) -> str:
    """Why ``report`` does not cover every package ("" when it does)."""
    # Our own editable package is not on PyPI: that skip is expected, every other one is a lookup failure.
    skipped = [d for d in report.get("dependencies", [])
               if d.get("skip_reason") and normalise(d["name"]) != "toy-cartoonizer"]
    if not skipped:
        return ""
    sample = "; ".join(d["skip_reason"] for d in skipped[:3])
    return f"{len(skipped)} of {len(report['dependencies'])} packages could not be audited ({sample} ...)"


def classify(report: dict, direct: set[str], ignored: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Findings as (failing: direct dependencies, warnings: transitive ones, ignored with reasons)."""
    failing, warnings, skipped = [], [], []
    for dep in report["dependencies"]:
        for vuln in dep.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fix released"
            line = f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})"
            reason = next((ignored[i] for i in ids if i in ignored), None)
            if reason is not None:
                skipped.append(f"{line}: {reason}")
            elif normalise(dep["name"]) in direct:
                failing.append(line)
            else:
                warnings.append(line)
    return failing, warnings, skipped


def main() -> int:
    report, problem = run_audit()
    if problem:
        print(f"audit: inconclusive ({problem}); retrying once in {RETRY_AFTER_S:.0f} s", file=sys.stderr)
        time.sleep(RETRY_AFTER_S)
        report, problem = run_audit()
    if problem:
        print(f"audit: INCONCLUSIVE: {problem}", file=sys.stderr)
        if os.environ.get("AUDIT_UNAVAILABLE") == "warn":
            print("audit: AUDIT_UNAVAILABLE=warn: not failing; no package was shown to be safe", file=sys.stderr)
            return 0
        return EXIT_INCONCLUSIVE

    failing, warnings, ignored = classify(report, direct_dependencies(), IGNORED)
    for line in ignored:
        print(f"audit: ignored {line}")
    for line in warnings:
        print(f"audit: warning (transitive) {line}")
    for line in failing:
        print(f"audit: FAIL (direct dependency) {line}", file=sys.stderr)
    audited = len(report["dependencies"])
    print(f"audit: {audited} packages audited; {len(failing)} findings in direct dependencies, "
          f"{len(warnings)} in transitive ones")
    return EXIT_FINDINGS if failing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Static checks over the source tree: no remote code, no pickle loading.

``trust_remote_code=True`` runs Python shipped with a model; ``torch.load`` without
``weights_only=True`` and ``pickle.load(s)`` execute whatever a weights file contains. None of them
may appear in code we ship or run (the processor, scripts, benchmarks, deploy files and tests).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("processor", "scripts", "bench", "deploy", "tests")
THIS_FILE = Path(__file__).resolve()


def python_files() -> list[Path]:
    return sorted(p for d in SCANNED if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py") if p != THIS_FILE)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_the_scan_sees_the_tree() -> None:
    files = python_files()
    assert any(p.name == "models.py" for p in files) and len(files) > 20


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_remote_code_and_no_pickle_loading(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    problems = []
    for call, name in _calls(ast.parse(source)):
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        trust = _keyword(call, "trust_remote_code")
        if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
            problems.append(f"{where}: trust_remote_code={ast.unparse(trust)}")
        safetensors = _keyword(call, "use_safetensors")
        if safetensors is not None and not (isinstance(safetensors, ast.Constant) and safetensors.value is True):
            problems.append(f"{where}: use_safetensors={ast.unparse(safetensors)}")
        if name.endswith("torch.load"):
            weights_only = _keyword(call, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                problems.append(f"{where}: {name}(...) without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
            problems.append(f"{where}: {name}")
    # Also a literal in text (a config dict, a string passed through **kwargs).
    for match in re.finditer(r"trust_remote_code['\"]?\s*[:=]\s*True", source):
        problems.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not problems, "\n".join(problems)

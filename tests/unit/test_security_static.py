"""Static checks over the source tree: no remote code, no pickle loading.

``trust_remote_code=True`` runs Python shipped with a model; ``torch.load`` without
``weights_only=True`` and ``pickle.load(s)`` execute whatever a weights file contains. None of them
may appear in code we ship or run (the processor, scripts, benchmarks, deploy files, tests and their harnesses).

One pickle load is allowed, at exactly one call site: ``torch.load(..., weights_only=True)`` in
``processor/models/safeweights.py:_load_restricted``, the opt-in conversion of pickle-only weights that runs
in ``processor models pull --convert-pickle`` (PyTorch's restricted unpickler; docs/security.md).
Any other ``torch.load``, even with ``weights_only=True``, fails the scan.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("processor", "scripts", "bench", "deploy", "tests", "testkit")
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


#: The one allowed pickle load: (file, enclosing function). See the comment at the call.
ALLOWED_TORCH_LOAD = ("processor/models/safeweights.py", "_load_restricted")
#: Calls that unpickle whatever they are given.
PICKLE_CALLS = ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                "cloudpickle.load", "cloudpickle.loads")
#: Modules whose loaders must not be imported by bare name (``from torch import load`` hides the call).
PICKLE_MODULES = {"torch", "torch.serialization", "pickle", "dill", "joblib", "cloudpickle"}


def _calls_with_function(tree: ast.AST):
    """(call, called name, name of the innermost enclosing function or None)."""
    def visit(node: ast.AST, function: str | None):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                yield child, ast.unparse(child.func), function
            yield from visit(child, inner)
    yield from visit(tree, None)


def pickle_problems(source: str, relative: str) -> list[str]:
    """Every pickle load in ``source`` (the file ``relative`` to the repo) except the allowed one."""
    problems = []
    tree = ast.parse(source)
    for call, name, function in _calls_with_function(tree):
        where = f"{relative}:{call.lineno}"
        if name.endswith(("torch.load", "serialization.load")):
            weights_only = _keyword(call, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                problems.append(f"{where}: {name}(...) without weights_only=True")
            elif (relative, function) != ALLOWED_TORCH_LOAD:
                problems.append(f"{where}: {name}(...) outside {ALLOWED_TORCH_LOAD[0]}:{ALLOWED_TORCH_LOAD[1]}, "
                                f"the one allowed (restricted) pickle load")
        if name in PICKLE_CALLS:
            problems.append(f"{where}: {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
            for alias in node.names:
                if alias.name in ("load", "loads", "Unpickler"):
                    problems.append(f"{relative}:{node.lineno}: from {node.module} import {alias.name}")
    return problems


def test_the_scan_sees_the_tree() -> None:
    files = python_files()
    assert any(p.name == "loader.py" for p in files) and len(files) > 20


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_remote_code_and_no_pickle_loading(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    problems = []
    for call, _name in _calls(ast.parse(source)):
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        trust = _keyword(call, "trust_remote_code")
        if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
            problems.append(f"{where}: trust_remote_code={ast.unparse(trust)}")
        safetensors = _keyword(call, "use_safetensors")
        if safetensors is not None and not (isinstance(safetensors, ast.Constant) and safetensors.value is True):
            problems.append(f"{where}: use_safetensors={ast.unparse(safetensors)}")
    problems += pickle_problems(source, path.relative_to(REPO).as_posix())
    # Also a literal in text (a config dict, a string passed through **kwargs).
    for match in re.finditer(r"trust_remote_code['\"]?\s*[:=]\s*True", source):
        problems.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not problems, "\n".join(problems)


def test_the_one_allowed_pickle_load_is_restricted_and_explained() -> None:
    relative, function = ALLOWED_TORCH_LOAD
    source = (REPO / relative).read_text(encoding="utf-8")
    loads = [(call, fn) for call, name, fn in _calls_with_function(ast.parse(source)) if name.endswith("torch.load")]
    assert [fn for _, fn in loads] == [function], "exactly one torch.load, inside the allowed function"
    call = loads[0][0]
    assert isinstance(_keyword(call, "weights_only"), ast.Constant) and _keyword(call, "weights_only").value is True
    before = "\n".join(source.splitlines()[max(0, call.lineno - 8):call.lineno - 1])
    assert "weights_only=True" in before and "never in the worker" in before, "the call says why it is safe"
    # The worker's modules never reach it: only the pull command's conversion path imports it.
    for module in ("processor/worker/runner.py", "processor/pipeline/diffusion.py"):
        assert "convert_components" not in (REPO / module).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "relative,source",
    [
        ("processor/other.py", "import torch\ndef f(p):\n    return torch.load(p, weights_only=True)\n"),
        (
            "processor/models/safeweights.py",
            "import torch\ndef elsewhere(p):\n    return torch.load(p, weights_only=True)\n",
        ),
        ("processor/models/safeweights.py", "import torch\ndef _load_restricted(p):\n    return torch.load(p)\n"),
        (
            "processor/models/safeweights.py",
            "import torch\ndef _load_restricted(p):\n    return torch.load(p, weights_only=False)\n",
        ),
        ("processor/other.py", "import torch\nx = torch.serialization.load('w.bin')\n"),
        ("tests/t.py", "import pickle\nx = pickle.loads(b'')\n"),
        ("processor/other.py", "from torch import load\n"),
        ("processor/other.py", "from pickle import loads as l\n"),
    ],
)
def test_the_scan_flags_every_other_pickle_load(relative: str, source: str) -> None:
    assert pickle_problems(source, relative)


def test_the_scan_accepts_the_allowed_form() -> None:
    source = "import torch\ndef _load_restricted(p):\n    return torch.load(p, map_location='cpu', weights_only=True)\n"
    assert pickle_problems(source, ALLOWED_TORCH_LOAD[0]) == []

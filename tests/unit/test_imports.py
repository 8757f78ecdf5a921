"""The worker, the bucket protocol, the store and the manifest import and run without PyTorch:
only the model stages import torch, and only when a configured style needs them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.waits import HANG_GUARD_S

TORCH_FREE = (
    "processor.worker.runner",
    "processor.queue.protocol",
    "processor.queue.claims",
    "processor.queue.scan",
    "processor.manifest",
    "processor.store.local",
    "processor.store.s3",
    "processor.worker.metrics",
    "processor.cli.main",
    "processor.pipeline.item",
    "processor.pipeline.background",
)


#: The floors of DESIGN.md section 2, lowest first: a module imports from its own floor or lower ones,
#: never higher (``names``, ``redact``, ``localfiles`` and ``tracing`` are helpers on the lowest floor;
#: ``client``, the API's Python client, sits on the API's response models).
FLOORS = (
    {"config", "errors", "manifest", "log", "names", "redact", "localfiles", "tracing"},
    {"store"},
    {"models"},
    {"queue"},
    {"pipeline"},
    {"worker"},
    {"api"},
    {"client"},
    {"finetune"},
    {"cli"},
)
PACKAGE = Path(__file__).resolve().parents[2] / "processor"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``tree``, function-level and TYPE_CHECKING ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "processor":  # from processor import errors
            found += [(node.lineno, f"processor.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(package: Path) -> list[str]:
    """``path:line: floor -> module`` for every import from a lower floor to a higher one."""
    floor_of = {name: level for level, names in enumerate(FLOORS) for name in names}
    upward = []
    for path in sorted(package.rglob("*.py")):
        top = path.relative_to(package).parts[0].removesuffix(".py")
        if top in ("__init__", "__main__"):  # the version, and `python -m processor`
            continue
        assert top in floor_of, f"processor/{top} is on no floor: add it to FLOORS (DESIGN.md section 2)"
        for line, module in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            parts = module.split(".")
            if parts[0] == "processor" and len(parts) > 1 and floor_of.get(parts[1], -1) > floor_of[top]:
                upward.append(f"{path.relative_to(package.parent)}:{line}: {top} -> {module}")
    return upward


def test_imports_only_point_down_the_floors() -> None:
    assert upward_imports(PACKAGE) == []


@pytest.mark.parametrize(("module", "source"), [
    ("models/pull_list.py", "def f():\n    from processor.pipeline.caption import Captioner\n"),
    ("api/serve.py", "from processor.cli.compose import build_store\n"),
    ("queue/requeue.py", "from processor import worker\n"),
])
def test_an_upward_import_is_found(tmp_path, module, source) -> None:
    for name in FLOORS[0]:
        (tmp_path / f"{name}.py").write_text("")
    target = tmp_path / module
    target.parent.mkdir(parents=True)
    target.write_text(source)
    [found] = upward_imports(tmp_path)
    assert found.startswith(f"{tmp_path.name}/{module}:")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_core_modules_import_without_torch() -> None:
    heavy = ("torch", "diffusers", "transformers")
    code = (f"import sys\nfor m in {TORCH_FREE!r}: __import__(m)\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[0] in {heavy!r}))")
    assert run_python(code) == "[]"


def test_a_toon_only_run_sets_up_without_torch(tmp_path) -> None:
    code = (
        "import sys\n"
        "from processor.cli.compose import build_registry, detect_device\n"
        "from processor.config import load_settings\n"
        f"settings = load_settings(None, store={{'kind': 'local', 'root': {str(tmp_path)!r}}})\n"
        "build_registry(settings).setup(['toon'])\n"
        "print(detect_device(settings, ['toon']), 'torch' in sys.modules)\n"
    )
    assert run_python(code) == "cpu False"


def test_only_the_space_app_imports_gradio() -> None:
    """gradio is the optional space extra: the processor package (serve included) runs without it."""
    code = ("import sys\nimport processor.api.app, processor.api.routes.pages, processor.cli.main\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('gradio', 'gradio_client')))")
    assert run_python(code) == "[]"
    import ast
    from pathlib import Path

    for path in Path(__file__).resolve().parents[2].joinpath("processor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("gradio", "gradio_client") for n in names), path


#: Folders whose code runs outside a test session: none of them may import the ``tests`` package
#: (their shared harnesses and tiny-model builders live in ``testkit``).
NOT_TESTS = ("bench", "testkit", "scripts", "processor", "deploy")


def test_bench_testkit_and_scripts_never_import_tests() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}: {name}"
                 for folder in NOT_TESTS for path in sorted((root / folder).rglob("*.py"))
                 for _line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
                 if name.split(".")[0] == "tests"]
    assert not offenders, "import testkit instead of tests:\n" + "\n".join(offenders)


#: Lines a module of ``processor/`` may hold: past it, split it by responsibility.
MAX_MODULE_LINES = 600


def test_no_module_of_the_package_is_over_the_line_limit() -> None:
    too_long = {str(path.relative_to(PACKAGE.parent)): n for path in sorted(PACKAGE.rglob("*.py"))
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {too_long}"

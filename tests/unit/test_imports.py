"""The worker, the bucket protocol, the store and the manifest import and run without PyTorch:
only the model stages import torch, and only when a configured style needs them."""

from __future__ import annotations

import subprocess
import sys

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
    "processor.app.cli",
    "processor.pipeline.item",
    "processor.pipeline.background",
)


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
        "from processor.app.cli import build_registry, detect_device\n"
        "from processor.config import load_settings\n"
        f"settings = load_settings(None, store={{'kind': 'local', 'root': {str(tmp_path)!r}}})\n"
        "build_registry(settings).setup(['toon'])\n"
        "print(detect_device(settings, ['toon']), 'torch' in sys.modules)\n"
    )
    assert run_python(code) == "cpu False"


def test_only_the_space_app_imports_gradio() -> None:
    """gradio is the optional space extra: the processor package (serve included) runs without it."""
    code = ("import sys\nimport processor.api.app, processor.api.routes.pages, processor.app.cli\n"
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


def imported_modules(path) -> list[str]:
    """Every module name ``path`` imports, at any depth (function-level imports included)."""
    import ast

    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_bench_testkit_and_scripts_never_import_tests() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}: {name}"
                 for folder in NOT_TESTS for path in sorted((root / folder).rglob("*.py"))
                 for name in imported_modules(path) if name.split(".")[0] == "tests"]
    assert not offenders, "import testkit instead of tests:\n" + "\n".join(offenders)

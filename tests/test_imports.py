"""The worker, the bucket protocol, the store and the manifest import and run without PyTorch:
only the model stages import torch, and only when a configured style needs them."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = ("processor.worker.runner", "processor.queue.protocol", "processor.queue.claims", "processor.queue.scan", "processor.manifest",
              "processor.store.local", "processor.store.s3", "processor.metrics", "processor.app.cli",
              "processor.pipeline.item", "processor.pipeline.background")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
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

"""The one Hugging Face fetch helper: cache-only lookups fail with a message that names the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from processor.errors import ModelUnavailableError
from processor.models.hub import PULL_COMMAND, fetch_file, fetch_snapshot
from testkit.waits import HANG_GUARD_S


@pytest.mark.parametrize("offline", [True, False])
def test_a_snapshot_missing_from_the_cache_names_models_pull(tmp_path, offline) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        fetch_snapshot("org/not-cached", what="model org/not-cached@v1", revision="v1", cache_dir=str(tmp_path),
                       download=False, offline=offline)
    message = str(info.value)
    assert message.startswith("model org/not-cached@v1 is not in the model cache") and PULL_COMMAND in message
    assert ("offline mode is on" in message) == offline


def test_a_file_missing_from_the_cache_names_models_pull(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match=PULL_COMMAND):
        fetch_file("org/not-cached", "model_index.json", what="model org/not-cached", cache_dir=str(tmp_path),
                   download=False, offline=True)


def test_safeweights_does_not_import_the_model_loader() -> None:
    """models imports safeweights; the other way round was an import loop."""
    code = "import sys, processor.models.safeweights; print('processor.models.loader' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

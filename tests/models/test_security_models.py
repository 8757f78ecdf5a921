"""Models load from safetensors only: a folder with pickle weights is refused, never unpickled.

The tiny pipeline is saved as usual, then every ``*.safetensors`` file is replaced by a ``.bin``
holding a booby-trapped pickle that creates a marker file when unpickled. Loading must fail with
``ModelUnavailableError`` naming safetensors, and the marker must not exist.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from processor.config import ModelSettings
from processor.errors import ModelUnavailableError
from processor.models.loader import ModelLoader

#: What each safetensors file is called in the pickle format (diffusers' and transformers' names).
PICKLE_NAMES = {
    "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
    "model.safetensors": "pytorch_model.bin",
}


class _Trap:
    """Unpickling this touches ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def pickle_only_model(tiny_sd: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "pickle-model"
    shutil.copytree(tiny_sd, folder)
    marker = tmp_path / "UNPICKLED"
    replaced = 0
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
        (weights.parent / PICKLE_NAMES[weights.name]).write_bytes(pickle.dumps(_Trap(marker)))
        replaced += 1
    assert replaced >= 3  # unet, vae, text encoder
    return folder, marker


def test_pickle_weights_are_refused_with_a_clear_error(pickle_only_model) -> None:
    folder, marker = pickle_only_model
    with pytest.raises(ModelUnavailableError) as caught:
        ModelLoader(ModelSettings()).base(str(folder))
    message = str(caught.value)
    assert str(folder) in message and "safetensors" in message
    assert not marker.exists(), "a pickle was unpickled"

"""A folder the CLI runs in as a newcomer's would: a config with the local store and the toon
style, a ``photos/`` folder, no bucket yet, and no PROCESSOR_ variable but the session's metrics
port (so a developer's environment cannot change what a CLI test sees)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

CONFIG = "store: {kind: local, root: bucket}\nstyles: {toon: {engine: toon, variants: 1, max_side: 128}}\n"


def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: Mapping[str, bytes]) -> Path:
    """``tmp_path`` made such a folder (and the working directory), ``photos`` written under
    ``photos/``; its path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    for name in [n for n in os.environ if n.startswith("PROCESSOR_") and n != "PROCESSOR_METRICS__PORT"]:
        monkeypatch.delenv(name)
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "photos").mkdir()
    for name, data in photos.items():
        (tmp_path / "photos" / name).write_bytes(data)
    return tmp_path

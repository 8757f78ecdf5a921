"""The full chaos run takes minutes: it runs only when asked for (``-m slow`` or ``CHAOS_FULL=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("CHAOS_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="the full chaos run takes minutes: select it with -m slow or CHAOS_FULL=1")
    for item in items:
        if item.get_closest_marker("slow") and HERE in Path(item.fspath).resolve().parents:
            item.add_marker(skip)

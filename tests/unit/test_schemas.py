"""The JSON Schemas in docs/ are the ones the models export (``processor schema --write docs``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.manifest import json_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_the_committed_schema_is_the_models_own(name: str, tmp_path: Path) -> None:
    assert main(["schema", "--write", str(tmp_path)]) == 0
    written = json.loads((tmp_path / name).read_text())
    committed = json.loads((DOCS / name).read_text())
    assert committed == written, f"docs/{name} is stale: run processor schema --write docs"

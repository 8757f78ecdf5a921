"""``processor results`` writes only inside ``--out``, whatever a manifest in the bucket says.

Anyone who can write the bucket can write a manifest; ``results`` must not fetch keys outside the
input's output folder, nor turn an input named ``..`` (a valid key on AWS S3) into ``--out/..``,
which wrote the files into the folder above ``--out``.
"""

from __future__ import annotations

import json

import pytest

from processor.cli.main import main
from processor.config import PrefixSettings
from processor.manifest import Manifest, Source, Variant, WorkerInfo
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROCESSOR_CONFIG", raising=False)
    (tmp_path / "config.yaml").write_text("store: {kind: local, root: bucket}\n")
    return LocalStore(tmp_path / "bucket")


def _manifest(input_key: str, *variant_keys: str) -> bytes:
    variants = [Variant(key=k, style="toon", engine="toon", index=i, seed=i, width=8, height=8, sha256="0" * 64)
                for i, k in enumerate(variant_keys)]
    return Manifest(source=Source(key=input_key, etag="e", size=1), variants=variants,
                    worker=WorkerInfo(id="w", version="0", device="cpu")).to_json_bytes()


@pytest.mark.parametrize("evil", ["outputs/cow/../../../escape.txt", "outputs/elsewhere/toon-00.png",
                                  "outputs/cow/sub/toon-00.png", "outputs/cow/..", "config.yaml"])
def test_a_tampered_manifest_cannot_make_results_write_elsewhere(project, tmp_path, capsys, evil) -> None:
    keys = KeyLayout(PrefixSettings()).for_input("inputs/cow.jpg")
    project.put("outputs/cow/toon-00.png", b"png")
    project.put(keys.manifest, _manifest("inputs/cow.jpg", "outputs/cow/toon-00.png", evil))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".store" not in p.parts)
    assert main(["results", "cow.jpg", "--out", "got"]) == 1
    assert "refusing to download" in capsys.readouterr().err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".store" not in p.parts)
    assert after == before  # nothing written, not even the output folder


def test_results_of_an_honest_manifest_still_work(project, tmp_path) -> None:
    keys = KeyLayout(PrefixSettings()).for_input("inputs/shelf/cow.jpg")
    project.put("outputs/shelf/cow/toon-00.png", b"png")
    project.put(keys.manifest, _manifest("inputs/shelf/cow.jpg", "outputs/shelf/cow/toon-00.png"))
    assert main(["results", "shelf/cow.jpg", "--out", "got"]) == 0
    assert (tmp_path / "got/cow/toon-00.png").read_bytes() == b"png"
    assert json.loads((tmp_path / "got/cow/manifest.json").read_text())["source"]["key"] == "inputs/shelf/cow.jpg"


def test_an_input_named_dotdot_is_downloaded_into_a_plain_folder(project, tmp_path) -> None:
    keys = KeyLayout(PrefixSettings()).for_input("inputs/shelf/..")
    assert keys.output_prefix == "outputs/shelf/%2E/"  # ".." splits as stem "." and an empty extension
    project.put(keys.output_prefix + "toon-00.png", b"png")
    project.put(keys.manifest, _manifest("inputs/shelf/..", keys.output_prefix + "toon-00.png"))
    (tmp_path / "got").mkdir()
    assert main(["results", "shelf/..", "--out", "got"]) == 0
    assert (tmp_path / "got/%2E/toon-00.png").read_bytes() == b"png"
    assert not (tmp_path / "toon-00.png").exists()

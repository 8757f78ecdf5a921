"""``Lora hashes`` as AUTOMATIC1111 computes them (``processor.models.lora_hash``): the sha256 of
a safetensors file's tensor bytes, its 8-byte length and JSON header skipped, or the trainer's
``sshs_model_hash``; each expected value computed here from the file's bytes."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from processor.models.lora_hash import a1111_lora_hash


def write_lora(path: Path, metadata: dict[str, str] | None = None) -> Path:
    tensors = {"lora_unet_down.lora_down.weight": np.arange(64, dtype=np.float32).reshape(8, 8),
               "lora_unet_down.lora_up.weight": np.ones((8, 8), dtype=np.float16)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def header_skipped_sha256(data: bytes) -> str:
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()


def test_the_hash_is_the_tensor_bytes_sha256_as_a1111_shortens_it(tmp_path):
    path = write_lora(tmp_path / "toon.safetensors", {"ss_output_name": "toon"})
    data = path.read_bytes()
    assert a1111_lora_hash(path) == header_skipped_sha256(data)[:12]
    assert a1111_lora_hash(path) != hashlib.sha256(data).hexdigest()[:12]  # not the whole file's


def test_metadata_does_not_change_the_hash_and_a_trainers_own_hash_is_taken(tmp_path):
    plain = write_lora(tmp_path / "a.safetensors")
    renamed = write_lora(tmp_path / "b.safetensors", {"ss_output_name": "another name", "note": "x" * 100})
    assert plain.read_bytes() != renamed.read_bytes()
    assert a1111_lora_hash(plain) == a1111_lora_hash(renamed)
    stored = "0123456789abcdef" * 4
    trained = write_lora(tmp_path / "c.safetensors", {"sshs_model_hash": stored})
    assert a1111_lora_hash(trained) == stored[:12]
    # Something else in that key is not written into every PNG: the hash is computed instead.
    odd = write_lora(tmp_path / "d.safetensors", {"sshs_model_hash": "not, a hash"})
    assert a1111_lora_hash(odd) == header_skipped_sha256(odd.read_bytes())[:12]


def test_a_file_that_is_not_safetensors_is_hashed_whole(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"\x80\x02" + b"pickle bytes" * 10)
    assert a1111_lora_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    header = json.dumps({"__metadata__": {}}).encode()
    broken = tmp_path / "short.safetensors"
    broken.write_bytes(struct.pack("<Q", 10_000) + header)  # a header length past the end: not one
    assert a1111_lora_hash(broken) == hashlib.sha256(broken.read_bytes()).hexdigest()[:12]

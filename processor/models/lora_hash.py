"""The hash AUTOMATIC1111 writes for a LoRA in ``Lora hashes`` (and Civitai looks models up by).

A1111's Lora extension (``extensions-builtin/Lora/network.py``, ``NetworkOnDisk``) takes the
file's ``sshs_model_hash`` metadata when the trainer wrote one (kohya's sd-scripts do), else the
"addnet" hash of ``modules/hashes.py``: the sha256 of a safetensors file without its header (the
8-byte little-endian header length and the JSON header it counts are skipped, the tensor bytes
hashed), so metadata edits do not change it. The infotext shows its first ``A1111_SHORT_HASH``
hex digits (``shorthash``). A file that is not safetensors is hashed whole, as A1111 does. Unlike
A1111, a ``sshs_model_hash`` that is not hex is ignored (the hash is computed instead): it goes
into every PNG's text.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: Hex digits of the hash A1111's infotext shows (``NetworkOnDisk.shorthash``).
A1111_SHORT_HASH = 12
#: Bytes read at a time while hashing.
_BLOCK = 1 << 20
#: Bytes: a safetensors header larger than this is not read for its metadata (safetensors' own cap).
_MAX_HEADER = 100 * 1024 * 1024
_HEX = re.compile(r"[0-9a-fA-F]{12,64}")


def _header_length(path: Path) -> int | None:
    """The JSON header's length of a safetensors file, or None when the file is not one."""
    if path.suffix.lower() != ".safetensors":
        return None
    with path.open("rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        return None
    length = int.from_bytes(head, "little")
    return length if length <= min(_MAX_HEADER, path.stat().st_size - 8) else None


def _sha256_from(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def a1111_lora_hash(path: Path) -> str:
    """The short hash A1111 shows for the LoRA file ``path`` (see the module docstring)."""
    length = _header_length(path)
    if length is None:
        return _sha256_from(path, 0)[:A1111_SHORT_HASH]
    with path.open("rb") as handle:
        handle.seek(8)
        header = handle.read(length)
    try:
        metadata = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):
        metadata = {}
    stored = metadata.get("sshs_model_hash") if isinstance(metadata, dict) else None
    if isinstance(stored, str) and _HEX.fullmatch(stored):
        return stored[:A1111_SHORT_HASH]
    return _sha256_from(path, 8 + length)[:A1111_SHORT_HASH]

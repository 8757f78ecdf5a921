"""``LocalStore.stream`` (``StreamsObjects``): chunks of one version, missing keys, the ETag."""

from __future__ import annotations

import hashlib

import pytest

from processor.errors import ObjectNotFound
from processor.store.base import StreamsObjects
from processor.store.local import LocalStore


def test_chunks_are_of_the_version_opened_even_if_replaced_meanwhile(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    assert isinstance(store, StreamsObjects)
    old, new = b"a" * 300_000, b"b" * 10
    store.put("k.png", old)
    info, chunks = store.stream("k.png", chunk_bytes=100_000)
    first = next(chunks)
    store.put("k.png", new)  # a writer replaces the file while the reader is half-way
    assert first + b"".join(chunks) == old
    assert (info.size, info.etag) == (len(old), hashlib.md5(old).hexdigest())
    assert b"".join(store.stream("k.png")[1]) == new


def test_a_missing_key_raises_before_any_chunk(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    with pytest.raises(ObjectNotFound):
        store.stream("nothing.png")

"""The bucket-backed label cache the composition root gives the caption stage."""

from __future__ import annotations

import logging

from processor.errors import TransientStoreError
from processor.queue.shared_cache import StoreCache


def test_get_put_and_never_overwrite(local_store):
    cache = StoreCache(local_store, ".processor/cache/label-tables")
    assert cache.get("flavors-abc.safetensors") is None
    cache.put("flavors-abc.safetensors", b"first")
    cache.put("flavors-abc.safetensors", b"second")  # a racing worker: create-if-absent, no error
    assert cache.get("flavors-abc.safetensors") == b"first"
    assert [o.key for o in local_store.list(".processor/cache/")] == [
        ".processor/cache/label-tables/flavors-abc.safetensors"
    ]


class FailingStore:
    description = "failing"

    def get(self, key, **kwargs):
        raise TransientStoreError("503 Slow Down", key=key)

    def put(self, key, body, **kwargs):
        raise TransientStoreError("503 Slow Down", key=key)


def test_store_errors_cost_a_cache_miss_not_the_item(caplog):
    cache = StoreCache(FailingStore(), ".processor/cache/label-tables/")
    with caplog.at_level(logging.WARNING, logger="processor.shared_cache"):
        assert cache.get("t.safetensors") is None
        cache.put("t.safetensors", b"x")
    assert [r.getMessage() for r in caplog.records] == ["shared_cache_get_failed", "shared_cache_put_failed"]

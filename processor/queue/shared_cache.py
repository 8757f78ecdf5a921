"""A ``LabelCache`` (``processor.pipeline.caption``) over the bucket's state prefix.

Stages never touch the store; the composition root hands this to the caption stage so that label
tables computed by one worker are downloaded, not recomputed, by the next one. Writes are
create-if-absent: two workers racing to upload the same table both succeed in effect (the loser's
bytes are equal), and an existing blob is never rewritten. Store errors cost a recomputation or a
missed upload, logged, never an item or the worker.
"""

from __future__ import annotations

import logging

from processor.errors import FatalError, ObjectNotFound, PreconditionFailed, StoreError
from processor.store.base import ObjectStore

log = logging.getLogger("processor.shared_cache")

#: Bytes: a cached blob larger than this is not read (the 100k-label flavor table of ViT-L-14 is
#: about 150 MB as float16; this leaves room for wider CLIP models).
MAX_BLOB_BYTES = 1024 * 1024 * 1024


class StoreCache:
    """Blobs under ``prefix`` in ``store`` (``<state>/cache/label-tables/`` for label tables)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    def get(self, name: str) -> bytes | None:
        key = self.prefix + name
        try:
            return self.store.get(key, max_bytes=MAX_BLOB_BYTES).body
        except ObjectNotFound:
            return None
        except FatalError:
            raise
        except StoreError as exc:
            log.warning("shared_cache_get_failed", extra={"key": key, "error": type(exc).__name__, "detail": str(exc)})
            return None

    def put(self, name: str, data: bytes) -> None:
        key = self.prefix + name
        try:
            self.store.put(key, data, content_type="application/octet-stream", if_none_match=True)
            log.info("shared_cache_put", extra={"key": key, "bytes": len(data)})
        except PreconditionFailed:
            pass  # another worker uploaded the same table first
        except FatalError:
            raise
        except StoreError as exc:
            log.warning("shared_cache_put_failed", extra={"key": key, "error": type(exc).__name__, "detail": str(exc)})

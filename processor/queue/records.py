"""Bounded reads of the bucket's records: how every client of the queue reads a manifest or a
failure record.

The bucket is untrusted: whoever can write it can plant a record of gigabytes, or garbage, at a
key the worker derives. The worker's fetch stage, ``processor status`` / ``results`` / ``retry``
and the HTTP API all read records here, with the same byte cap (``MAX_RECORD_BYTES``: refused
from the size the store reports, before the body is downloaded), and treat one that is too
large or does not parse as "not written by this processor", so no client trusts or pays for
more than another.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from processor.errors import ObjectNotFound, ObjectTooLarge
from processor.manifest import MAX_RECORD_BYTES
from processor.store.base import ObjectStore, StoredObject

#: A record model read back from the bucket (``Manifest``, ``FailureRecord``).
RecordT = TypeVar("RecordT", bound=BaseModel)


def get_capped(store: ObjectStore, key: str, max_bytes: int = MAX_RECORD_BYTES) -> StoredObject:
    """The object at ``key`` read with a byte cap. An oversized one (not written by us) comes back
    with an empty body, which fails validation, and the ETag of a HEAD, for the ``If-Match`` of
    its replacement. ``ObjectNotFound`` when there is none."""
    try:
        return store.get(key, max_bytes=max_bytes)
    except ObjectTooLarge:
        return StoredObject(info=store.head(key), body=b"")


def parse_record(found: StoredObject, model: type[RecordT]) -> RecordT | None:
    """``found``'s body as ``model``; None when it is not one (garbage, another schema, oversized)."""
    try:
        return model.model_validate_json(found.body)
    except ValidationError:
        return None


def read_record(store: ObjectStore, key: str, model: type[RecordT],
                max_bytes: int = MAX_RECORD_BYTES) -> RecordT | None:
    """The record at ``key``; None when there is none or it is not one of ours (too large, or
    not parsing as ``model``). An oversized one is refused before its body is read."""
    try:
        found = store.get(key, max_bytes=max_bytes)
    except (ObjectNotFound, ObjectTooLarge):
        return None
    return parse_record(found, model)

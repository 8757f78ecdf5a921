"""The ObjectStore protocol: the only way the rest of the project talks to a bucket.

Contract, shared by every adapter and checked by ``tests/contract/test_contract.py``:

- Keys are ``/``-separated strings. ``list`` yields every object under a prefix exactly once, in
  the server's order (UTF-8 byte order on AWS S3 and the local store; SeaweedFS lists folder by
  folder), paginating internally, starting after ``start_after``. Callers that need an order sort.
- ETags are opaque strings without surrounding quotes; a write of different bytes changes an
  object's ETag.
- ``put(..., if_none_match=True)`` creates only when the key is absent; ``put(..., if_match=E)``
  and ``delete(..., if_match=E)`` act only when the current ETag is ``E``. A lost condition raises
  ``PreconditionFailed``; the check and the write are atomic.
- ``server_time`` on results is the server's clock (the HTTP ``Date`` header); claim expiry is
  judged on it together with ``last_modified``, never on the worker's own clock.
- Missing keys raise ``ObjectNotFound``; retryable faults raise ``TransientStoreError`` (after
  the adapter's own retries ran out); bad credentials, a missing bucket or a refused listing
  raise ``StoreAccessError``; a GET or HEAD refused for that one object (a policy, a KMS key,
  SSE-C) raises ``ObjectUnreadable`` (``ObjectAccessDenied``, ``ObjectEncrypted``).
- ``get(..., max_bytes=N)`` reads at most N + 1 bytes of the body whatever the object's size:
  it refuses from the size the store reports before reading, and again if the body runs longer.
- ETags are the hex MD5 of the bytes for single-part uploads (S3; the local store computes the
  same), so rewriting identical bytes keeps the ETag.
- ``close()`` releases the adapter's connections; it is idempotent, and a store works as a
  context manager that closes it (``with build_store(settings) as store: ...``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

_Self = TypeVar("_Self", bound="Closeable")


@dataclass(frozen=True)
class ObjectInfo:
    """An object's key, ETag, size and times (and its metadata, from a HEAD), as a listing or a HEAD
    returns them."""

    key: str
    etag: str
    size: int
    last_modified: datetime
    #: The server's clock when it answered (HEAD/GET/PUT); None on listings.
    server_time: datetime | None = None
    #: User metadata, as a HEAD returns it (names lowercased on S3); empty on listings and puts.
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StoredObject:
    """An object read whole: its info, bytes and user metadata."""

    info: ObjectInfo
    body: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket (see the module docstring for the contract every adapter keeps)."""

    #: Where this store points, for messages and logs (never contains credentials).
    description: str

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, ascending, after ``start_after``."""
        ...

    def head(self, key: str) -> ObjectInfo: ...

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        """Read an object. With ``max_bytes``, an object larger than that raises
        ``errors.ObjectTooLarge`` before its body is read (and at most ``max_bytes + 1`` bytes are
        ever read)."""
        ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo: ...

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``; deleting a missing key is not an error (S3 semantics)."""
        ...

    def close(self) -> None:
        """Release connections (idempotent); the store must not be used afterwards."""
        ...

    def __enter__(self) -> ObjectStore: ...

    def __exit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class CountsRequests(Protocol):
    """An adapter that counts the requests it sends its backend (every HTTP request, retries and
    each page of a listing included: only the adapter sees those, so the count lives there rather
    than in a wrapper around ``ObjectStore``, which would see one call per listing). Kept off the
    ``ObjectStore`` protocol: a store need not count, and its callers never depend on it."""

    def request_count(self) -> int: ...


#: Bytes per chunk of a streamed read (``StreamsObjects``).
STREAM_CHUNK_BYTES = 256 * 1024


@runtime_checkable
class StreamsObjects(Protocol):
    """An adapter that can hand out an object's body in chunks, so a server relays a file without
    holding it whole (the local store; S3 and COS answer with presigned URLs instead)."""

    def stream(self, key: str, *, chunk_bytes: int = STREAM_CHUNK_BYTES) -> tuple[ObjectInfo, Iterator[bytes]]:
        """The object's info, and its body as chunks of at most ``chunk_bytes``, all of one version
        (``ObjectNotFound`` before any chunk when it is missing). Iterate the chunks to the end, or
        close the iterator, to release the file."""
        ...


def requests_sent(store: object) -> int:
    """``store``'s request count, or 0 for a store that does not count (``CountsRequests``)."""
    return store.request_count() if isinstance(store, CountsRequests) else 0


class Closeable:
    """``close()`` (a no-op here) and the context manager that calls it, for adapters to inherit."""

    def close(self) -> None:
        """Nothing to release; adapters holding connections override this."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def strip_etag(etag: str) -> str:
    """ETags travel quoted in HTTP; we keep them bare everywhere."""
    return etag.strip().strip('"')


def attachment_header(filename: str) -> str:
    """``Content-Disposition: attachment`` for ``filename``, ASCII-only and without quotes or
    backslashes (the names are the worker's own ``style-NN.png``; this only keeps a hand-made
    manifest from breaking out of the header)."""
    safe = "".join(c for c in filename if 32 <= ord(c) < 127 and c not in '"\\') or "download"
    return f'attachment; filename="{safe}"'

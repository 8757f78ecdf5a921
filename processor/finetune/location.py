"""Where training data and results live: an ``ObjectStore`` and a key prefix.

An output folder is a ``LocalStore`` rooted there with an empty prefix, so ``--out DIR`` and the
bucket's ``models/loras/<name>/`` are written by the same code. A local folder of training images
is read through ``ReadOnlyFolder`` instead, which never writes into the user's photos.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from processor.errors import ObjectNotFound
from processor.names import is_plain_path
from processor.store.base import Closeable, ObjectInfo, ObjectStore, StoredObject


class ReadOnlyFolder(Closeable):
    """The list/get half of ``ObjectStore`` over a local folder (keys are paths relative to it;
    symbolic links and hidden entries are not listed), with no files of its own. It holds no
    connections, so ``close`` (from ``Closeable``) has nothing to do."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.description = f"local folder {self.root}"

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                if filename.startswith(".") or path.is_symlink() or not key.startswith(prefix) or key <= start_after:
                    continue
                yield self._info(key, path)

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._path(key))

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        return StoredObject(info=self._info(key, path), body=path.read_bytes())

    def put(self, key: str, body: bytes, **_: object) -> ObjectInfo:
        raise PermissionError(f"{self.description} is read-only here (training images are never modified)")

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        raise PermissionError(f"{self.description} is read-only here (training images are never modified)")

    def request_count(self) -> int:
        return 0

    def _path(self, key: str) -> Path:
        path = self.root / key
        if not is_plain_path(key) or not path.is_file():
            raise ObjectNotFound(f"{key} does not exist in {self.description}", key=key)
        return path

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key=key, etag=f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}", size=st.st_size,
                          last_modified=datetime.fromtimestamp(st.st_mtime, timezone.utc))


@dataclass(frozen=True)
class Location:
    store: ObjectStore
    #: "" or a prefix ending in "/".
    prefix: str

    @classmethod
    def of(cls, store: ObjectStore, prefix: str) -> Location:
        prefix = prefix.strip("/")
        return cls(store, prefix + "/" if prefix else "")

    @property
    def description(self) -> str:
        return f"{self.store.description} {self.prefix or '(root)'}"

    def key(self, name: str) -> str:
        return self.prefix + name

    def names(self, under: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """(name relative to the prefix, info) of every object under ``prefix + under``."""
        for info in self.store.list(self.prefix + under):
            yield info.key[len(self.prefix):], info

    def put(self, name: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        key = self.key(name)
        self.store.put(key, body, content_type=content_type)
        return key

    def get(self, name: str) -> bytes:
        return self.store.get(self.key(name)).body

    def get_or_none(self, name: str) -> bytes | None:
        try:
            return self.get(name)
        except ObjectNotFound:
            return None

    def delete(self, name: str) -> None:
        self.store.delete(self.key(name))

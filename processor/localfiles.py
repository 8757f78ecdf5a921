"""Photos named on the command line: files and folders (``process``, ``submit``, ``mask``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from processor.errors import ConfigError


def walk(paths: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, path relative to the argument it came from); a file argument keeps its name. Hidden
    files in folders are skipped; a missing argument is a ``ConfigError``."""
    for arg in paths:
        root = Path(arg)
        if root.is_file():
            yield root, root.name
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    yield path, path.relative_to(root).as_posix()
        else:
            raise ConfigError(f"{arg}: no such file or directory")

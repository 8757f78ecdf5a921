"""A Python that cannot import some packages: how tests run the command line as it runs on an
install without an optional extra (the core install has no ``sd`` extra: no torch, diffusers,
huggingface_hub), without building a second virtual environment.

``env_without`` writes a ``sitecustomize.py`` that puts a finder first on ``sys.meta_path`` which
refuses the named top-level packages with the ``ModuleNotFoundError`` a missing package raises,
and returns an environment whose ``PYTHONPATH`` starts with its folder, so every ``python`` started
with it (``python -m processor ...``) imports it at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The project's root: the subprocess imports this checkout's ``processor``.
ROOT = Path(__file__).resolve().parents[1]

_SITECUSTOMIZE = '''"""Written by testkit/blockers.py: these packages behave as if not installed."""
import sys
from importlib.abc import MetaPathFinder

BLOCKED = frozenset({blocked!r})


class _Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


def env_without(modules: Iterable[str], folder: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment (``base``, default ``os.environ``) in which ``modules`` cannot be imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=sorted(modules)))
    env = dict(os.environ if base is None else base)
    paths = [str(folder), str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env

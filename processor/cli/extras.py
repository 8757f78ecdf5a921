"""The optional extras (``pyproject.toml``'s optional dependencies) and what a missing one says: one
line naming the extra and the command that installs it, never a ``ModuleNotFoundError``.

Commands check up front where they know what they will load (``require``: ``run`` and ``process``
with a diffusion style, ``models pull``); the dispatch translates any other import of a missing
extra's module (``missing_extra``), so a path nobody checked still ends in the same line.
"""

from __future__ import annotations

import importlib.util
from enum import Enum

from processor.errors import ConfigError


class Extra(str, Enum):
    """An optional extra of the package, by its name in ``pip install -e ".[NAME]"``."""

    #: The subject mask's ONNX model (onnxruntime; the sd extra includes it).
    MASK = "mask"
    #: Stable Diffusion, captions, hub models, ONNX masks.
    SD = "sd"
    #: ``processor serve``: the HTTP API and its web page.
    API = "api"
    #: IBM COS with an IAM API key.
    COS = "cos"

    @property
    def install(self) -> str:
        return f'pip install -e ".[{self.value}]"'


#: The top-level modules each extra installs, as imported (the distributions of pyproject.toml's
#: ``[project.optional-dependencies]``; ``tests/unit/test_cli_output.py`` keeps the two in step).
#: The smallest extra comes first: a missing module names the least there is to install.
EXTRA_MODULES: dict[Extra, tuple[str, ...]] = {
    Extra.MASK: ("onnxruntime",),
    Extra.SD: ("torch", "diffusers", "transformers", "safetensors", "accelerate", "huggingface_hub", "peft",
               "clip_interrogator", "open_clip", "onnxruntime", "av"),
    Extra.API: ("fastapi", "uvicorn", "python_multipart", "httpx", "jinja2", "standardwebhooks"),
    Extra.COS: ("ibm_boto3", "ibm_botocore", "ibm_s3transfer"),
}
#: The modules without which nothing of the extra works (what ``require`` and ``doctor`` check);
#: the others are needed by one feature each (captions, ONNX masks, video) and say so when it loads.
CORE_MODULES: dict[Extra, tuple[str, ...]] = {
    Extra.MASK: ("onnxruntime",),
    Extra.SD: ("torch", "diffusers", "transformers", "safetensors", "huggingface_hub"),
    Extra.API: ("fastapi", "uvicorn", "python_multipart", "jinja2"),
    Extra.COS: ("ibm_boto3",),
}
#: What each extra is for, in a message.
PURPOSE = {
    Extra.MASK: "the subject mask's ONNX model, u2netp by default",
    Extra.SD: "diffusion styles, captions and hub models",
    Extra.API: "the HTTP API and its web page",
    Extra.COS: "IBM COS with an IAM API key",
}


class MissingExtra(ConfigError):
    """What the command was asked to do needs an extra that is not installed: the install is what
    to change (exit 3, as for any setup a retry cannot fix)."""

    def __init__(self, extra: Extra, missing: list[str], needed_by: str) -> None:
        super().__init__(f"{needed_by} needs the {extra.value} extra ({PURPOSE[extra]}), which is not installed "
                         f"(no module {', '.join(missing)}): {extra.install}")
        self.extra = extra


def missing_modules(extra: Extra) -> list[str]:
    """The core modules of ``extra`` that cannot be imported here (nothing is imported)."""
    missing = []
    for name in CORE_MODULES[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
            found = False
        if not found:
            missing.append(name)
    return missing


def require(extra: Extra, needed_by: str) -> None:
    """Raise ``MissingExtra`` when ``extra`` is not installed; ``needed_by`` starts the message
    (``--style modern-disney``)."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(extra, missing, needed_by)


def extra_of(exc: ImportError) -> Extra | None:
    """The extra whose module ``exc`` failed to import, or None (a bug, or a core dependency). Only
    a missing module counts: a name missing from an installed package is a version problem."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    top = (exc.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def missing_extra(exc: ModuleNotFoundError, needed_by: str = "this command") -> MissingExtra | None:
    """``exc`` as ``MissingExtra`` when it is the import of an extra's module, else None."""
    extra = extra_of(exc)
    if extra is None:
        return None
    return MissingExtra(extra, [(exc.name or "?").split(".")[0]], needed_by)

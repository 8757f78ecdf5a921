"""Per-image overrides: an optional ``inputs/<path>.json`` next to the photo.

Validated like the config: an unknown key or a bad value makes the input fail with a record that
names the key, never a silent default.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processor.errors import InvalidSidecar

#: Bytes: a sidecar is a few lines of JSON; anything larger is a mistake.
MAX_SIDECAR_BYTES = 64 * 1024


class SidecarBackground(BaseModel):
    """``background`` in a sidecar: replaces the mode and/or prompt of the styles' background."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "inpaint", "generate", "instruct"] | None = None
    prompt: str | None = Field(default=None, max_length=2000)


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Styles for this image instead of ``run.styles``.
    styles: list[str] | None = Field(default=None, min_length=1)
    #: Variants per style instead of the style's ``variants``.
    variants: int | None = Field(default=None, ge=1, le=16)
    #: Base seed instead of the style's ``seed`` (variant i uses seed + i).
    seed: int | None = None
    #: Prompt text for engines that take one (replaces the caption).
    prompt: str | None = Field(default=None, max_length=2000)
    negative: str | None = Field(default=None, max_length=2000)
    #: An instruct-pix2pix edit instruction.
    instruction: str | None = Field(default=None, max_length=2000)
    #: The background for this image: ``{"mode": "generate", "prompt": "a sunny beach"}``.
    background: SidecarBackground | None = None

    def style_overrides(self) -> dict[str, object]:
        """The style fields this sidecar replaces (``background`` merges into the style's own).
        ``prompt`` is not one of them: it replaces the caption for this input
        (``processor.pipeline.prompt``), without a per-image engine."""
        fields = ("variants", "seed", "negative", "instruction")
        overrides: dict[str, object] = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        if self.background is not None and self.background.model_fields_set:
            overrides["background"] = self.background.model_dump(exclude_unset=True)
        return overrides


def parse_sidecar(data: bytes, key: str) -> Sidecar:
    if len(data) > MAX_SIDECAR_BYTES:
        raise InvalidSidecar(f"sidecar {key} is {len(data):,} bytes; limit is {MAX_SIDECAR_BYTES:,}")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSidecar(f"sidecar {key} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        # "[[[[..." fits under the byte cap yet nests past the parser's recursion limit; left
        # uncaught it would kill the fetch thread and with it the worker.
        raise InvalidSidecar(f"sidecar {key} is nested too deeply to be a settings object") from None
    if not isinstance(raw, dict):
        raise InvalidSidecar(f"sidecar {key} must be a JSON object like {{\"variants\": 2}}")
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise InvalidSidecar(f"sidecar {key}: {problems}") from None

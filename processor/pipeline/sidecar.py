"""Per-input overrides: an optional ``inputs/<path>.json`` next to the photo, its ``x-amz-meta-*``
metadata, and (next) the HTTP API, all through ``validate_overrides``.

Everything here is untrusted input. Validated like the config, with the config's own bounds: an
unknown key, a bad value, a style this worker does not define or work over the per-input caps makes
the input fail with an ``InvalidSidecar`` record that names the field and what to change; never a
silent default, never a crash of the worker.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processor.config import (
    MAX_PROMPT_CHARS,
    BackgroundMode,
    PromptText,
    Seed,
    Settings,
    VariantCount,
    with_sources,
    work_bound_problem,
)
from processor.config.base import FramesPerSecond
from processor.errors import InvalidSidecar
from processor.pipeline.prompt import clean_text
from processor.queue.keys import MAX_SIDECAR_BYTES

#: Styles a sidecar may list before validation reads them (the configured cap is checked after).
MAX_LISTED_STYLES = 64
#: Characters of a style name (config keys are short words).
MAX_STYLE_NAME_CHARS = 128
#: The object metadata key of a per-image prompt (``x-amz-meta-prompt`` on S3).
PROMPT_METADATA_KEY = "prompt"
#: Bytes: S3 holds at most 2 KB of user metadata per object (names and values).
MAX_METADATA_BYTES = 2048


class SidecarBackground(BaseModel):
    """``background`` in a sidecar: replaces the mode and/or prompt of the styles' background."""

    # strict: JSON says what it means; "2" is not a count and true is not 1.
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: BackgroundMode | None = None
    prompt: PromptText | None = None


class Sidecar(BaseModel):
    """The overrides one input may carry; the bounds are the style sections' own (processor/config/base.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: Styles for this image instead of ``run.styles``. Each name is checked by ``validate_overrides``
    #: against the settings, so that its message can list the configured styles.
    styles: list[Any] | None = None
    #: Variants per style instead of the style's ``variants``.
    variants: VariantCount | None = None
    #: Base seed instead of the style's ``seed`` (variant i uses seed + i).
    seed: Seed | None = None
    #: Prompt text for engines that take one (replaces the caption).
    prompt: PromptText | None = None
    negative: PromptText | None = None
    #: An instruct-pix2pix edit instruction.
    instruction: PromptText | None = None
    #: The background for this image: ``{"mode": "generate", "prompt": "a sunny beach"}``.
    background: SidecarBackground | None = None
    #: Frames of each clip of the ``engine: animate`` styles, at most ``pipeline.video.max_frames``.
    frames: Annotated[int, Field(ge=2)] | None = None
    #: Frames per second of those clips.
    fps: FramesPerSecond | None = None
    #: A picture of the look wanted, a bucket key under ``prefixes.styles``, for styles with an
    #: ``ip_adapter`` (``processor.pipeline.look``). Not a style field: no per-picture engine.
    style_image: str | None = None

    def style_overrides(self) -> dict[str, object]:
        """The style fields this sidecar replaces (``background`` merges into the style's own).
        ``prompt`` is not one of them: it replaces the caption for this input
        (``processor.pipeline.prompt``), without a per-image engine."""
        fields = ("variants", "seed", "negative", "instruction", "frames", "fps")
        overrides: dict[str, object] = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        if self.background is not None and self.background.model_fields_set:
            overrides["background"] = self.background.model_dump(exclude_unset=True)
        return overrides


@dataclass(frozen=True)
class ItemOverrides:
    """One input's validated overrides: what the worker runs for it."""

    #: Styles to run, in order, each named once (the worker's styles unless the input named its own).
    styles: tuple[str, ...]
    #: Style fields to replace, valid for every style in ``styles`` (``EngineRegistry.engine``).
    style_fields: Mapping[str, Any] = field(default_factory=dict)
    #: A prompt that replaces the caption, and where it came from (``sidecar`` / ``metadata``).
    prompt: str | None = None
    prompt_source: str | None = None
    #: True when the input named its own styles (they may need loading on first use).
    own_styles: bool = False
    #: The input's own style picture, a checked key under ``prefixes.styles`` (``pipeline.look``),
    #: and where it was given (``sidecar`` / ``metadata``).
    style_image: str | None = None
    style_image_from: str | None = None


def validate_overrides(
    raw: Mapping[str, Any] | None,
    settings: Settings,
    *,
    styles: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    where: str = "sidecar",
) -> ItemOverrides:
    """The one validation of per-input overrides, for sidecars, object metadata and the API.

    ``raw`` is a plain mapping of overrides (a sidecar's JSON object; None: none); ``styles`` the
    styles the input gets without its own (default ``run.styles``); ``metadata`` the input's object
    metadata (its ``prompt``); ``where`` starts every message (``sidecar inputs/cow.json``). Raises
    ``InvalidSidecar`` naming the field (``background.mode``) and what to change; returns overrides
    that every style of the input accepts.
    """
    default_styles = tuple(styles if styles is not None else settings.run.styles)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidSidecar(f"{where} must be a JSON object like {{\"variants\": 2}}, not {_kind(raw)}")
    try:
        car = Sidecar.model_validate(dict(raw))
    except ValidationError as exc:
        raise InvalidSidecar(f"{where}: {_problems(exc)}") from None

    names = default_styles
    if car.styles is not None:
        names = _style_names(car.styles, settings, where)
    problem = work_bound_problem(list(names), settings.styles, settings.run, car.variants)
    if problem:
        label = "styles" if car.styles is not None else f"the styles it gets ({', '.join(names)})"
        raise InvalidSidecar(f"{where}: {label} {problem}")
    if car.frames is not None and car.frames > settings.pipeline.video.max_frames:
        raise InvalidSidecar(f"{where}: frames {car.frames:,} is more than this worker makes "
                             f"(pipeline.video.max_frames: {settings.pipeline.video.max_frames}); ask for at most "
                             f"{settings.pipeline.video.max_frames}")
    # The still styles the input's animate styles start from run for it too, before them.
    names = tuple(with_sources(names, settings.styles))
    if not settings.run.allow_noncommercial:
        from processor.config.licenses import noncommercial_problem

        problem = noncommercial_problem(list(names), settings.styles)
        if problem:
            raise InvalidSidecar(f"{where}: styles {problem}")

    fields = car.style_overrides()
    for name in names:
        # A style the worker was built with but that is not in settings.styles (one registered in
        # code, as the benchmarks do) was checked where it was built; sidecar-named styles were
        # checked against settings.styles above.
        if name in settings.styles:
            style_with_overrides(name, settings.styles[name], fields, where)

    prompt, prompt_source = None, None
    if clean_text(car.prompt):
        prompt, prompt_source = car.prompt, "sidecar"
    else:
        meta = metadata_text(metadata, PROMPT_METADATA_KEY)
        if meta is not None and len(meta) > MAX_PROMPT_CHARS:
            raise InvalidSidecar(f"metadata x-amz-meta-{PROMPT_METADATA_KEY} is {len(meta):,} characters; "
                                 f"at most {MAX_PROMPT_CHARS:,}: shorten the prompt")
        if clean_text(meta):
            prompt, prompt_source = meta, "metadata"
    look, look_from = _style_image(car, metadata, names, settings, where)
    return ItemOverrides(styles=tuple(names), style_fields=fields, prompt=prompt, prompt_source=prompt_source,
                         own_styles=car.styles is not None, style_image=look, style_image_from=look_from)


def _style_image(car: Sidecar, metadata: Mapping[str, str] | None, names: Sequence[str], settings: Settings,
                 where: str) -> tuple[str | None, str | None]:
    """The input's own style picture key (the sidecar's over the metadata's), checked by ``pipeline.look``."""
    from processor.pipeline.look import STYLE_IMAGE_METADATA_KEY, validate_style_image

    key, given_in = car.style_image, "sidecar"
    if key is None:
        key = metadata_text(metadata, STYLE_IMAGE_METADATA_KEY)
        key = key if key is None or key.strip() else None  # an empty header value: none given
        given_in = "metadata"
        if key is not None:
            where = f"metadata x-amz-meta-{STYLE_IMAGE_METADATA_KEY}"
    checked = validate_style_image(key, names, settings.styles, settings.prefixes, where)
    return checked, given_in if checked is not None else None


def parse_sidecar(data: bytes, key: str) -> Sidecar:
    """A sidecar's bytes as a ``Sidecar`` (field checks only; ``validate_overrides`` checks the
    styles and caps against the settings)."""
    raw = load_sidecar_json(data, key)
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSidecar(f"sidecar {key}: {_problems(exc)}") from None


def load_sidecar_json(data: bytes, key: str) -> dict[str, Any]:
    """The sidecar's JSON object; any other JSON, or bytes that are not JSON, is ``InvalidSidecar``."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise InvalidSidecar(f"sidecar {key} is {len(data):,} bytes; limit is {MAX_SIDECAR_BYTES:,}")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not a reason to fail.
        raw = json.loads(data.decode("utf-8-sig"), object_pairs_hook=_refuse_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSidecar(f"sidecar {key} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        # "[[[[..." fits under the byte cap yet nests past the parser's recursion limit; left
        # uncaught it would kill the fetch thread and with it the worker.
        raise InvalidSidecar(f"sidecar {key} is nested too deeply to be a settings object") from None
    except _DuplicateKey as exc:
        raise InvalidSidecar(f"sidecar {key} sets {exc.args[0]!r} twice; keep one") from None
    except ValueError as exc:
        # Python refuses integer literals over 4300 digits (int_max_str_digits) with a plain ValueError.
        raise InvalidSidecar(f"sidecar {key} holds a number Python will not read: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidSidecar(f"sidecar {key} must be a JSON object like {{\"variants\": 2}}, not {_kind(raw)}")
    return raw


def metadata_text(metadata: Mapping[str, str] | None, name: str) -> str | None:
    """The value of ``x-amz-meta-<name>`` (any case), decoded: S3 returns non-ASCII values as
    RFC 2047 encoded words (``=?UTF-8?B?...?=``), which is also how ``encode_metadata`` sends them."""
    for key, value in (metadata or {}).items():
        if key.lower() == name and isinstance(value, str):
            return decode_metadata(value)
    return None


def encode_metadata(value: str) -> str:
    """``value`` as an HTTP-header-safe metadata value: itself when printable ASCII, else one
    RFC 2047 encoded word of its UTF-8 bytes (``=?UTF-8?B?...?=``), the form S3 returns non-ASCII
    metadata in, so that ``decode_metadata`` gives the same text back from every store."""
    if value.isascii() and value.isprintable() and "=?" not in value:
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode('utf-8')).decode('ascii')}?="


def decode_metadata(value: str) -> str:
    """The text of a metadata value that may hold RFC 2047 encoded words; other text unchanged."""
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError):
        return value
    text = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            try:
                text.append(chunk.decode(charset or "ascii", errors="replace"))
            except LookupError:  # an unknown charset name
                text.append(chunk.decode("utf-8", errors="replace"))
        else:
            text.append(chunk)
    return "".join(text)


def style_with_overrides(style_name: str, style: Any, overrides: Mapping[str, Any], where: str = "sidecar") -> Any:
    """``style`` with the override fields it has (a toon style ignores ``negative``), validated by
    the style's own rules; ``InvalidSidecar`` names the field and the style."""
    applicable = {k: v for k, v in overrides.items() if k in type(style).model_fields}
    if not applicable:
        return style
    current = style.model_dump()
    # A nested override (a sidecar's ``background: {prompt}``) replaces only the keys it names.
    merged = {k: current[k] | v if isinstance(v, dict) and isinstance(current.get(k), dict) else v
              for k, v in applicable.items()}
    try:
        return type(style).model_validate(current | merged)
    except ValidationError as exc:
        raise InvalidSidecar(f"{where}: values do not fit style {style_name!r}: {_problems(exc)}") from None


# --------------------------------------------------------------------------- helpers


class _DuplicateKey(Exception):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; which one the user meant is a guess.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _style_names(listed: list[Any], settings: Settings, where: str) -> tuple[str, ...]:
    if not listed:
        raise InvalidSidecar(f"{where}: styles: name at least one style, or leave styles out for the defaults")
    if len(listed) > MAX_LISTED_STYLES:
        raise InvalidSidecar(f"{where}: styles: lists {len(listed):,} entries; at most "
                             f"{settings.run.max_styles_per_input} per input (run.max_styles_per_input)")
    known = ", ".join(sorted(settings.styles))
    for i, name in enumerate(listed):
        if not isinstance(name, str):
            raise InvalidSidecar(f"{where}: styles.{i}: a style is named by a string like \"toon\", not {_kind(name)}")
        if name not in settings.styles:
            shown = name if len(name) <= MAX_STYLE_NAME_CHARS else name[:MAX_STYLE_NAME_CHARS] + "..."
            raise InvalidSidecar(f"{where}: styles.{i}: unknown style {shown!r}; configured styles: {known}")
    return tuple(listed)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _problems(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")[:300]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)

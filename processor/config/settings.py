"""The root ``Settings`` (every section of ``processor.config``) and how it is loaded.

Precedence: keyword arguments > environment ``PROCESSOR_<SECTION>__<KEY>`` > ``config.yaml`` >
defaults. The file is ``--config PATH``, else ``$PROCESSOR_CONFIG``, else ``./config.yaml`` (optional).
Unknown keys and bad values raise ``ConfigError`` naming the key and where it came from.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processor.config.animate import animate_problem
from processor.config.base import CONFIG_ENV, DEFAULT_CONFIG, ENV_PREFIX, NOT_SETTINGS_ENV
from processor.config.engines import ENGINE_KEYS, StyleSettings, default_styles
from processor.config.licenses import noncommercial_problem
from processor.config.pipeline import PipelineSettings
from processor.config.sections import (
    ApiSettings,
    CaptionSettings,
    ClaimSettings,
    LogSettings,
    MetricsSettings,
    ModelSettings,
    PrefixSettings,
    RunSettings,
    StoreSettings,
    TracingSettings,
)
from processor.config.styles import work_bound_problem
from processor.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    store: StoreSettings = StoreSettings()
    prefixes: PrefixSettings = PrefixSettings()
    run: RunSettings = RunSettings()
    claims: ClaimSettings = ClaimSettings()
    pipeline: PipelineSettings = PipelineSettings()
    styles: dict[str, StyleSettings] = Field(default_factory=default_styles)
    models: ModelSettings = ModelSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    caption: CaptionSettings = CaptionSettings()
    api: ApiSettings = ApiSettings()
    tracing: TracingSettings = TracingSettings()

    @model_validator(mode="after")
    def _styles_exist(self) -> Settings:
        missing = [name for name in self.run.styles if name not in self.styles]
        if missing:
            known = ", ".join(sorted(self.styles)) or "none"
            raise ValueError(f"run.styles names {missing} not defined under styles (defined: {known})")
        if not self.run.styles:
            raise ValueError("run.styles must name at least one style")
        problem = work_bound_problem(self.run.styles, self.styles, self.run)
        if problem:
            raise ValueError(f"run.styles {problem}")
        problem = animate_problem(self.styles, self.pipeline.video)
        if problem:
            raise ValueError(problem)
        if self.api.direct_style is not None and self.api.direct_style not in self.styles:
            raise ValueError(f"api.direct_style {self.api.direct_style!r} is not defined under styles")
        if not self.run.allow_noncommercial:
            problem = noncommercial_problem(self.run.styles, self.styles)
            if problem:
                raise ValueError(f"run.styles {problem}")
        if self.run.order_variants_by == "structure" and not self.pipeline.structure_score:
            raise ValueError("run.order_variants_by: structure needs pipeline.structure_score: true "
                             "(or set order_variants_by: none)")
        if self.run.order_variants_by == "clip" and self.pipeline.clip_score is None:
            raise ValueError("run.order_variants_by: clip needs pipeline.clip_score: {model: <CLIP model>} "
                             "(or set order_variants_by: structure or none)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _FilteredEnv(settings_cls), _YamlSource(settings_cls))


class _FilteredEnv(PydanticBaseSettingsSource):
    """``PROCESSOR_<SECTION>__<KEY>`` variables; ``PROCESSOR_CONFIG`` (the file path) and the API's
    secret variables are not keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS_ENV:
                continue
            path = name[len(ENV_PREFIX) :].lower().split("__")
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"environment variable {name} conflicts with another PROCESSOR_ variable")
            node[path[-1]] = _parse_env_value(value)
        return data


def _parse_env_value(value: str) -> Any:
    """Lists and numbers arrive as YAML scalars/flow sequences: ``[toon, anime]``, ``30``."""
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


_yaml_data: dict[str, Any] = {}


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _yaml_data


def resolve_config_path(path: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The config file to read and whether the user asked for it explicitly."""
    if path is not None:
        return Path(path), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return DEFAULT_CONFIG, False


def read_config_file(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist (from --config or ${CONFIG_ENV})")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (store:, run:, ...)")
    return data


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; every problem is a ``ConfigError`` naming key and source."""
    global _yaml_data
    config_path, required = resolve_config_path(path)
    _yaml_data = read_config_file(config_path, required)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_path, _yaml_data)) from None
    finally:
        _yaml_data = {}


def _describe(exc: ValidationError, path: Path, file_data: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
        # Drop pydantic's union tag (the engine, 'toon') that follows a style name: the key the
        # user wrote is styles.toon.variants, not styles.toon.toon.variants.
        if len(loc) > 2 and loc[0] == "styles" and loc[2] in _ENGINE_TAGS:
            del loc[2]
        msg = err["msg"]
        # A cross-field check on the whole tree has no location; by convention its message
        # starts with the key it is about ("run.styles names ..."), which finds the source.
        named = _KEY_FIRST.match(msg.removeprefix("Value error, "))
        if not loc and named:
            loc = named.group(1).split(".")
            msg = msg.removeprefix("Value error, ")
            lines.append(f"  {msg} (from {_source_of(loc, path, file_data)})")
            continue
        key = ".".join(loc) or "(top level)"
        source = _source_of(loc, path, file_data)
        if err["type"] == "extra_forbidden" and loc:
            lines.append(f"  {key}: {msg} (from {source})\n    {_unknown_key(loc)}")
            continue
        if err["type"] == "list_type" and source.startswith("environment"):
            msg += "; in an environment variable write a list as [a, b]"
        lines.append(f"  {key}: {msg} (from {source})")
    return f"invalid configuration ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n" + "\n".join(lines)


def _unknown_key(loc: list[str]) -> str:
    """``unknown setting run.styels: did you mean run.styles?``: the closest key the section takes
    (a mistyped key in the file or in a ``PROCESSOR_`` variable), else the keys it takes."""
    parent, wrong = loc[:-1], loc[-1]
    known = sorted(_keys_under(parent))
    where = ".".join(parent)
    close = difflib.get_close_matches(wrong, known, n=1, cutoff=KEY_SUGGESTION_CUTOFF)
    if close:
        return f"unknown setting {'.'.join(loc)}: did you mean {'.'.join([*parent, close[0]])}?"
    if known and len(known) <= MAX_KEYS_LISTED:
        return f"unknown setting {'.'.join(loc)}: {where or 'the top level'} takes {', '.join(known)}"
    return f"unknown setting {'.'.join(loc)}: see docs/configuration.md for the keys of {where or 'the file'}"


def _keys_under(parent: list[str]) -> set[str]:
    """The keys the settings take under ``parent`` (``["run"]``, ``["styles", "toon"]``): every
    alternative's, where a value may be one of several models (a style, by its engine)."""
    nodes: list[Any] = [Settings]
    for part in parent:
        below = []
        for annotation in (a for node in nodes for a in _alternatives(node)):
            if typing.get_origin(annotation) is dict:  # the part is a name (a style), not a key
                below.append(typing.get_args(annotation)[1])
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
                below.append(annotation.model_fields[part].annotation)
        nodes = below
    return {key for node in nodes for a in _alternatives(node)
            if isinstance(a, type) and issubclass(a, BaseModel) for key in a.model_fields}


def _alternatives(annotation: Any) -> list[Any]:
    """``annotation`` without ``Annotated`` and ``None``, one entry per member of a union."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for member in typing.get_args(annotation) for a in _alternatives(member)]
    return [] if annotation is type(None) else [annotation]


#: How close a mistyped key must be to a real one to be suggested (difflib ratio).
KEY_SUGGESTION_CUTOFF = 0.6
#: Keys of a section listed when none is close to a mistyped one (more: the docs page).
MAX_KEYS_LISTED = 12

#: Discriminator tags pydantic puts in a style's error location.
_ENGINE_TAGS = ENGINE_KEYS
#: A message that starts with the key it is about: ``run.styles ...``, ``styles.<name>.image_from ...``.
_KEY_FIRST = re.compile(r"([a-z_]+(?:\.[\w-]+)+) ")


def _source_of(loc: list[str], path: Path, file_data: dict[str, Any]) -> str:
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    if loc and env_name in os.environ:
        return f"environment {env_name}"
    # An unknown section or key set from a deeper variable (PROCESSOR_NOPE__KEY for section 'nope').
    below = sorted(n for n in os.environ if n.startswith(env_name + "__"))
    if loc and below:
        return f"environment {', '.join(below)}"
    node: Any = file_data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            break
    else:
        return str(path)
    if loc and isinstance(file_data, dict) and loc[0] in file_data:
        return str(path)
    return "defaults"

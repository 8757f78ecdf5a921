"""What a person sees around every command: the parser's one-line usage errors (with a suggestion),
the first line saying which config file and which bucket are in use, and the one line a fatal
error prints. The lines themselves are log events (``processor.log``): text for a person, JSON for
a collector, never both.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
from collections.abc import Sequence
from enum import Enum
from typing import Any, NoReturn

from processor.config import Settings, StoreSettings
from processor.config.base import ENV_PREFIX, NOT_SETTINGS_ENV
from processor.config.settings import resolve_config_path
from processor.errors import EXIT_USAGE
from processor.log import FATAL_EVENT, USING_EVENT
from processor.redact import redact, split_endpoint

log = logging.getLogger("processor.cli")

#: How close a mistyped option or command must be to a real one to be suggested (difflib ratio).
SUGGESTION_CUTOFF = 0.6
#: What the config line says when no file is read.
NO_CONFIG = "none: built-in defaults"


class Where(Enum):
    """What a command's first line names (``USING_EVENT``)."""

    #: The config file and the bucket.
    STORE = "store"
    #: The config file only: the command reads no bucket (``process``, ``mask``, ``models``).
    CONFIG = "config"
    #: Nothing on stderr: the command's own output starts with it (``status``).
    OUTPUT = "output"


class Parser(argparse.ArgumentParser):
    """``argparse`` without prefix matching (``--on`` is not ``--once``) and with one-line errors:
    ``processor run: unknown option --oncee: did you mean --once?`` instead of the usage. Every
    subcommand's parser is one too (argparse makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        #: The subcommands' action, once ``add_subparsers`` made it (suggestions for a mistyped one).
        self.commands: Any = None

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        # A subcommand's parser sees every argument after its name: what it leaves over is unknown
        # here, and only here is known which options would have been right.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras))
        return parsed, extras

    def unknown(self, extras: list[str]) -> str:
        first = extras[0]
        if not first.startswith("-"):
            return f"unexpected argument {first!r}"
        name = first.split("=", 1)[0]
        options = [option for action in self._actions for option in action.option_strings]
        close = difflib.get_close_matches(name, options, n=1, cutoff=SUGGESTION_CUTOFF)
        return f"unknown option {name}" + (f": did you mean {close[0]}?" if close else "")

    def error(self, message: str) -> NoReturn:
        invalid = re.search(r"invalid choice: '?([^'\s]+)'?", message)
        if invalid and self.commands is not None and message.startswith("argument COMMAND"):
            wrong = invalid.group(1)
            close = difflib.get_close_matches(wrong, list(self.commands.choices), n=1, cutoff=SUGGESTION_CUTOFF)
            message = f"unknown command {wrong!r}" + (f": did you mean {close[0]}?" if close else "")
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (`{self.prog} --help` lists what it takes)\n")


def config_source(path: str | None) -> str:
    """The config file a command reads (absolute), or ``NO_CONFIG``, and the settings keys the
    environment sets (``PROCESSOR_<SECTION>__<KEY>``), by key: never their values."""
    config_path, _ = resolve_config_path(path)
    shown = str(config_path.absolute()) if config_path.is_file() else NO_CONFIG
    keys = sorted(name[len(ENV_PREFIX):].lower().replace("__", ".") for name in os.environ
                  if name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS_ENV)
    return shown + (f" + environment {', '.join(keys)}" if keys else "")


def describe_store(store: StoreSettings) -> str:
    """Where the bucket is, from the settings alone (no request, no credentials): a local path, or
    ``s3://bucket at endpoint``."""
    if store.kind == "local":
        return f"local directory {store.root.absolute()}"
    endpoint, _ = split_endpoint(store.endpoint_url)
    where = endpoint or ("AWS" + (f" {store.region}" if store.region else ""))
    return redact(f"{store.kind}://{store.bucket} at {where}")


def announce(args: argparse.Namespace, settings: Settings) -> None:
    """The command's first line: its config file and, for commands that use one, its bucket."""
    where = getattr(args, "where", Where.STORE)
    if where is Where.OUTPUT:
        return
    fields = {"config": config_source(args.config)}
    api = getattr(args, "api", None)
    if api:  # ``submit --api``: the jobs go to the API, never to the configured bucket
        endpoint, _ = split_endpoint(api)
        fields["api"] = redact(endpoint or api)
    elif where is Where.STORE:
        fields["store"] = describe_store(settings.store)
    log.info(USING_EVENT, extra=fields)


def report_fatal(error: str, detail: str, exit_code: int, hint: str = "") -> None:
    """The one line of a fatal error (text: ``error: ...``; JSON: one ``fatal`` event)."""
    fields: dict[str, Any] = {"error": error, "detail": redact(detail), "exit_code": exit_code}
    if hint:
        fields["hint"] = hint
    log.error(FATAL_EVENT, extra=fields)

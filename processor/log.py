"""Structured logs: one event per line, fields not sentences; JSON when stderr is not a terminal,
text for a person when it is (``LogFormat``).

Call ``log.info("claimed", extra={"key": key, "etag": etag})``: the message is the event name and
``extra`` holds its fields. Values whose field name looks like a secret are masked, and so is
the user-info of any URL in a line (``processor.redact``: keys written into an endpoint URL).

While a thread works on one input, ``bind_item(key)`` makes every line that thread logs carry
``key`` (the input key), whichever module logs it; a line that already names another object as
``key`` (a store retry on an output) gets the input as ``input`` instead. The worker's fetch,
compute and upload threads each bind the item they hold (a context variable: per thread).
Likewise every line written inside a tracing span carries its ``trace_id`` (``processor.tracing``
binds it with ``bind_trace``), so a log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from processor.redact import redact

#: Field names never printed as they are.
_SECRET_HINTS = ("secret", "password", "token", "api_key", "apikey", "credential")
#: LogRecord attributes that are not user fields.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: The event of a fatal error: one line, the only one a command prints about it (fields
#: ``error``, ``detail``, ``hint``, ``exit_code``).
FATAL_EVENT = "fatal"
#: A command's first event: the config file and the store it uses (fields ``config``, ``store``).
USING_EVENT = "using"

#: The input the current thread is working on (each thread has its own value).
_item_key: ContextVar[str | None] = ContextVar("processor_item_key", default=None)


#: The trace of the span current on this thread or task (``processor.tracing``), when tracing is on.
_trace_id: ContextVar[str | None] = ContextVar("processor_trace_id", default=None)


def bind_trace(trace_id: str | None) -> Token[str | None]:
    """Tag this context's log lines with ``trace_id`` until ``unbind_trace`` with the token."""
    return _trace_id.set(trace_id)


def unbind_trace(token: Token[str | None]) -> None:
    _trace_id.reset(token)


#: The trace of the input the current thread is working on (``bind_item``), when tracing is on.
_item_trace: ContextVar[str | None] = ContextVar("processor_item_trace", default=None)


def bind_item(key: str | None, trace_id: str | None = None) -> None:
    """Tag this thread's log lines with input ``key`` (and the trace of its work, when tracing is
    on) from now on; ``None`` stops it."""
    _item_key.set(key)
    _item_trace.set(trace_id)


class ItemKeyFilter(logging.Filter):
    """Adds the bound input key (``bind_item``) and trace id (``bind_trace``) to every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = _trace_id.get() or _item_trace.get()
        if trace_id is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id
        key = _item_key.get()
        if key is not None:
            own = getattr(record, "key", None)
            if own is None:
                record.key = key
            elif own != key and not hasattr(record, "input"):
                record.input = key
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {}
    for name, value in vars(record).items():
        if name in _RESERVED or name.startswith("_"):
            continue
        if any(hint in name.lower() for hint in _SECRET_HINTS):
            value = "***"
        fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(event, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Lines for a person. ``timestamps``: each line starts with the time (a daemon's log, read
    later); without, a one-shot command's lines read as its output. The events a person meets most
    (``HUMAN_EVENTS``) read as sentences; every other event is its name and its fields."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        event = record.getMessage()
        level = record.levelname.lower()
        template = HUMAN_EVENTS.get(event)
        line = template(fields) if template is not None else None
        if line is None:
            if self.timestamps:
                prefix = f"{level:7} "
            else:  # a one-shot command: its info lines read as output, a warning says that it is one
                prefix = "" if record.levelno < logging.WARNING else f"{level}: "
            line = f"{prefix}{event}" + ("  " + _pairs(fields) if fields else "")
        if self.timestamps:
            line = datetime.fromtimestamp(record.created).strftime("%H:%M:%S ") + line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def _pairs(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())


def _fatal_line(fields: dict[str, Any]) -> str:
    hint = fields.get("hint")
    return f"error: {fields.get('detail', '')}" + (f" -> {hint}" if hint else "")


def _using_line(fields: dict[str, Any]) -> str:
    store, api = fields.get("store"), fields.get("api")
    return (f"using config {fields.get('config', '?')}" + (f"; store {store}" if store else "")
            + (f"; the HTTP API at {api}" if api else ""))


def _retry_line(fields: dict[str, Any]) -> str | None:
    if "op" not in fields:  # not the retry policy's event: its fields as they are
        return None
    sleep = fields.get("sleep_s")
    wait = f"{sleep:.1f}" if isinstance(sleep, (int, float)) else "?"
    return (f"store: {fields.get('op')} {fields.get('key')!r} failed ({fields.get('error_class')}); attempt "
            f"{fields.get('attempt')} of {fields.get('attempts', '?')}, next in {wait} s")


#: Events rendered as a sentence in text lines (the same fields go into JSON lines).
#: A renderer that returns None leaves the line to the generic form (the event and its fields).
HUMAN_EVENTS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    FATAL_EVENT: _fatal_line,
    USING_EVENT: _using_line,
    "store_retry": _retry_line,
}


class LogFormat(str, Enum):
    """How log lines are written (``log.format``, ``--log-format``)."""

    #: JSON when stderr is not a terminal (a collector reads it), else text.
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


def resolve_format(requested: str, stream: Any, *, quiet: bool = False) -> LogFormat:
    """The format ``auto`` stands for on ``stream``: text on a terminal, JSON elsewhere; text also
    under ``--quiet`` (the few lines left are for a person)."""
    fmt = LogFormat(requested)
    if fmt is not LogFormat.AUTO:
        return fmt
    on_terminal = bool(getattr(stream, "isatty", lambda: False)())
    return LogFormat.TEXT if on_terminal or quiet else LogFormat.JSON


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None, *, timestamps: bool = True,
                      quiet: bool = False) -> LogFormat:
    """Route every ``processor`` logger to ``stream`` (stderr) in ``fmt`` (resolved: ``resolve_format``)
    at ``level``; ``timestamps``: text lines start with the time (daemons). Returns the format used."""
    stream = stream or sys.stderr
    resolved = resolve_format(fmt, stream, quiet=quiet)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if resolved is LogFormat.JSON else TextFormatter(timestamps=timestamps))
    handler.addFilter(ItemKeyFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("processor").setLevel(level)
    return resolved

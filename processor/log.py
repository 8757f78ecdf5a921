"""Structured logs: one event per line, fields not sentences; JSON when stderr is not a terminal.

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
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from typing import Any

from processor.redact import redact

#: Field names never printed as they are.
_SECRET_HINTS = ("secret", "password", "token", "api_key", "apikey", "credential")
#: LogRecord attributes that are not user fields.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

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
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}" + (f"  {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ItemKeyFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("processor").setLevel(level)

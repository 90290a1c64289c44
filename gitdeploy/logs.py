"""Log lines for people (the default) and for machines (LOG_FORMAT=json), in web and worker alike.

    context(repository=..., run_id=..., delivery_id=...)   what the lines logged inside belong to
    ContextFilter        copies that context onto every record (installed on the handlers)
    JsonFormatter        one JSON object per line: time, level, logger, message, the context,
                         and any field given with ``extra=``
    log_format()         LOG_FORMAT, checked: "text" or "json"

Stdlib only: project/settings.py and gunicorn's master (gitdeploy.gunicorn_conf) import it before
Django is set up.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("repository", "run_id", "delivery_id")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "gitdeploy_log_context", default=MappingProxyType({})
)

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


def log_format(environ: dict[str, str] | None = None) -> str:
    """LOG_FORMAT, lower-cased; anything but text or json raises ValueError naming it."""
    raw = (environ if environ is not None else os.environ).get("LOG_FORMAT", "")
    value = raw.strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"LOG_FORMAT={raw!r}: use text or json")
    return value


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Lines logged inside the block carry these fields (empty values are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts the current context on the record, unless ``extra=`` already named the field."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        document: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_") and value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """The LOGGING dict for Django (web and worker): one console handler on the root logger."""
    formatter: dict[str, Any] = (
        {"()": "gitdeploy.logs.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "gitdeploy.logs.ContextFilter"}},
        "formatters": {"console": formatter},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "console",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }

"""Logging helpers: a JSON formatter, and a one-call setup for the access log.

The gateway logs through the standard `logging` module. Its access log is the
`pygateway.access` logger (one INFO record per request, see `pygateway._access_log`); the
rest is under `pygateway.*` (errors, dropped log entries, health changes).

    import pygateway.logging

    pygateway.logging.configure_access_log()  # one JSON object per request, on stdout

`JsonFormatter` renders any record as one line of JSON, for log shippers that read
structured lines (Vector, Fluent Bit, Datadog's agent, CloudWatch, Loki...). Use it in your
own `logging` configuration like any formatter.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from ._access_log import access_logger

__all__ = ["JsonFormatter", "configure_access_log"]

#: Attributes every LogRecord has: what is left on a record is what `extra=` added.
_BUILTIN = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    # uvicorn's colored copy of its own message.
    "color_message",
}

#: The text line of `configure_access_log(json=False)`.
_TEXT_FORMAT = "%(asctime)s %(message)s"
_HANDLER_NAME = "pygateway.access"


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line.

    The keys, in order:

    - `time`: when the record was made, ISO 8601 in UTC with milliseconds
      (`2026-11-26T12:34:05.123Z`); `level` (`INFO`...), `logger` (its name) and
      `message` (the formatted message);
    - the fields of an access record (`record.access`: `status`, `method`, `uri`,
      `latency_ms`, `request_id`...), flattened at the top level, as python-json-logger and
      structlog put their fields;
    - anything passed with `extra=` (`logger.info("...", extra={"order": 7})`);
    - `exception` (the formatted traceback) and `stack` (with `stack_info=True`), when present.

    The first four keys win over an `extra=` field of the same name.

    Args:
        rename: output keys to rename, such as `{"time": "@timestamp", "level": "severity"}`;
            any key can be renamed, access fields included.
        default: turns a value JSON cannot represent into one it can (`str` by default, so a
            datetime or a UUID in `extra=` never breaks a log line).
        ensure_ascii: escape non-ASCII characters (off: UTF-8 is written as is).

    Subclasses can override `as_dict` to add, drop or reshape keys.
    """

    def __init__(
        self,
        *,
        rename: Mapping[str, str] | None = None,
        default: Callable[[Any], Any] = str,
        ensure_ascii: bool = False,
    ) -> None:
        super().__init__()
        self.rename = dict(rename or {})
        self.default = default
        self.ensure_ascii = ensure_ascii

    def format(self, record: logging.LogRecord) -> str:
        text = _json.dumps(
            self.as_dict(record), default=self.default, ensure_ascii=self.ensure_ascii
        )
        if not text.isascii():
            # Header values keep undecodable bytes as lone surrogates, which no stream can
            # encode: a client sending one must not get its request left out of the log.
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text

    def as_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as the dict that `format` serializes."""
        data: dict[str, Any] = {
            "time": self.format_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _BUILTIN:
                continue
            if key == "access" and isinstance(value, dict):
                for name, field in value.items():
                    data.setdefault(name, field)
            else:
                data.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            # Cached on the record, as logging.Formatter does, for the other handlers.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        if self.rename:
            return {self.rename.get(key, key): value for key, value in data.items()}
        return data

    def format_time(self, record: logging.LogRecord) -> str:
        """ISO 8601, UTC, milliseconds: `2026-11-26T12:34:05.123Z`."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def configure_access_log(
    stream: IO[str] | None = None, *, json: bool = True, level: int = logging.INFO
) -> logging.Handler:
    """Write the access log (`pygateway.access`) to `stream`, one line per request.

    For applications that do not configure `logging` themselves: one call, and every request
    the gateway handles prints a line, as JSON (`JsonFormatter`) or as the text line (the
    time, then the combined-log-like message). The records do not propagate to the root
    logger, so they are not printed twice. Calling it again replaces the handler an earlier
    call added. Returns the handler (remove it with `access_logger.removeHandler`).

    Args:
        stream: where lines go; `sys.stdout` (at the time of the call) by default.
        json: JSON lines, or text lines.
        level: `logging.INFO` logs every request; above INFO turns the access log off.

    Lines are written after each response was sent, but on the event loop: a stream that
    blocks (a pipe nobody reads) stalls the process. For slow destinations, see the
    QueueHandler advice in docs/observability.md.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.name = _HANDLER_NAME
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(_TEXT_FORMAT))
    for previous in [h for h in access_logger.handlers if h.name == _HANDLER_NAME]:
        access_logger.removeHandler(previous)
    access_logger.addHandler(handler)
    access_logger.setLevel(level)
    access_logger.propagate = False
    return handler

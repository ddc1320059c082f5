"""Structured logs: one JSON object per line.

Log calls pass context through ``extra`` (session_id, service_id, reason...). Secrets never
reach a log call in the first place; as a second line of defence, the formatter drops any
extra field whose name says it holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_NEVER = {"otp", "autopassword", "wstoken", "jwt", "credential", "secret", "token", "signature"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg`` and the extras."""

    _encode = json.JSONEncoder(ensure_ascii=False).encode

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not once per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        extras = {key: fields[key] for key in fields if key not in _STANDARD}
        entry = self._entry(record.created, record.levelname, record.name, record.getMessage())
        _add_fields(entry, extras)
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encode(entry)

    def event_line(self, logger: str, msg: str, fields: dict[str, Any]) -> str:
        """The line :meth:`format` makes of ``logging.getLogger(logger).info(msg,
        extra=fields)``, built without a LogRecord (see :func:`event`)."""
        entry = self._entry(time.time(), "INFO", logger, msg)
        _add_fields(entry, fields)
        return self._encode(entry)

    def _entry(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        return {
            "ts": self._timestamp(created),
            "level": level.lower(),
            "logger": logger,
            "msg": msg,
        }


_SCALARS = (str, int, float, bool, type(None))


def _add_fields(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if key.lower() in _NEVER:
            continue
        entry[key] = value if isinstance(value, _SCALARS) else _text(value)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes formatted lines to a stream.

    The lines written on every login (:func:`event`) are collected while the event loop runs
    and written together once it has run its current callbacks: one write system call per
    loop iteration instead of one per line, under load. Every other line is written at once,
    after whatever was collected, so order is kept and nothing collected waits behind a
    shutdown: the server logs its own shutdown lines as it stops, and a process that ends
    on a re-raised SIGTERM runs no exit handlers."""

    BATCH = 64 * 1024

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._batch: list[str] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._batch.append(line)
        self._write_batch()

    def write_line(self, line: str) -> None:
        """Collect one formatted line (without its newline); see the class docstring."""
        with self.lock or contextlib.nullcontext():
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if not self._batch and loop is not None:
                loop.call_soon(self._flush_batch)
            self._batch.append(line + "\n")
            self._size += len(line) + 1
            if loop is None or self._size >= self.BATCH:
                self._write_batch()

    def _flush_batch(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write_batch()

    def _write_batch(self) -> None:
        if not self._batch:
            return
        text = "".join(self._batch)
        self._batch.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a full disk or a closed pipe must not break a request
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def flush(self) -> None:
        self._flush_batch()
        super().flush()


_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+")


class RedactQueryTokens(logging.Filter):
    """The socket URL carries the wsToken in its query; servers log request lines at debug
    level. Blank it out wherever such a line is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = _QUERY_TOKEN.sub(r"\1[redacted]", message)
            record.args = ()
        return True


def install_redaction() -> None:
    """Attach :class:`RedactQueryTokens` to the server's loggers (idempotent)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryTokens) for f in logger.filters):
            logger.addFilter(RedactQueryTokens())


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a log line must never fail because of one odd attribute
        return f"<{type(value).__name__}>"


def event(logger: logging.Logger, msg: str, **fields: Any) -> None:
    """``logger.info(msg, extra=fields)`` for the events written on every login (session
    initiated, approved): the same line, built straight into the handler's batch when the
    operator's own logging set-up is what would handle it: the root's only handler is the
    :class:`LineHandler` of :func:`configure`, and no filter or other handler was added on the
    way to it (a test's log capture, an embedding application's own handlers). Otherwise, and
    when INFO is off, it is exactly that ``logger.info`` call."""
    handler = _plain_path(logger) if logger.isEnabledFor(logging.INFO) else None
    if handler is not None and isinstance(handler.formatter, JsonFormatter):
        handler.write_line(handler.formatter.event_line(logger.name, msg, fields))
    else:
        logger.info(msg, extra=fields)


def _plain_path(logger: logging.Logger) -> LineHandler | None:
    """The handler a record from ``logger`` would reach alone, if it is ours and unfiltered."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    root = logging.root
    if len(root.handlers) != 1 or root.filters:
        return None
    handler = root.handlers[0]
    if not isinstance(handler, LineHandler) or handler.filters:
        return None
    return handler


def configure(level: str = "INFO") -> None:
    # Nothing we log uses the caller's file and line, thread or process names: skip
    # collecting them for every record (the logging module's documented optimisation).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would put query strings (the socket's wsToken) in the log.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

"""Structured logs: one JSON object per line.

Log calls pass context through ``extra`` (session_id, service_id, reason...). Secrets never
reach a log call in the first place; as a second line of defence, the formatter drops any
extra field whose name says it holds one.
"""

from __future__ import annotations

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
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.lower() in _NEVER:
                continue
            entry[key] = (
                value if isinstance(value, str | int | float | bool | None) else _text(value)
            )
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would put query strings (the socket's wsToken) in the log.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

"""JSON responses and the one place that turns exceptions into contract error bodies."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from idtoken import logs
from idtoken.errors import (
    MethodNotAllowed,
    NotFound,
    OperatorError,
    ServerError,
    TemporarilyUnavailable,
)
from idtoken.store.base import StoreUnavailable

log = logging.getLogger("idtoken.http")

_NO_STORE = {"Cache-Control": "no-store"}


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = _encode(body).encode("utf-8")
    return Response(
        data,
        status_code=status,
        media_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


class _Answer(Response):
    """A response whose body and header lines were rendered before (a constant answer)."""

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = list(raw_headers)  # a copy: whoever gets it may add headers


_ANSWERS: dict[tuple[object, ...], tuple[bytes, list[tuple[bytes, bytes]]]] = {}
_ANSWERS_KEPT = 64


def error_response(error: OperatorError) -> Response:
    if not error.quiet:
        return json_response(error.body(), error.status, error.headers)
    # A quiet error is an answer given over and over with the same words (CIBA's
    # authorization_pending, every few seconds per waiting client): rendered once.
    key = (error.status, error.code, error.description, *error.headers.items())
    kept = _ANSWERS.get(key)
    if kept is None:
        rendered = json_response(error.body(), error.status, error.headers)
        if len(_ANSWERS) >= _ANSWERS_KEPT:
            _ANSWERS.clear()
        kept = _ANSWERS[key] = (bytes(rendered.body), rendered.raw_headers)
    return _Answer(error.status, *kept)


async def operator_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperatorError)
    path = request.scope["path"]  # not request.url: Starlette would build the whole URL
    if exc.quiet:
        # An expected answer of a protocol that polls (CIBA's authorization_pending), not a
        # refusal: one line per poll would drown the log, so only at debug.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request answered", extra={"path": path, "error": exc.code})
    else:
        # The same line as log.info(..., extra=...), without a LogRecord.
        logs.event(
            log,
            "request refused",
            path=path,
            error=exc.code,
            status=exc.status,
            detail=exc.log_detail,
        )
    return error_response(exc)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    request.app.state.runtime.metrics.store_errors.inc()
    log.error("store unavailable", extra={"path": request.scope["path"], "detail": str(exc)})
    return error_response(
        TemporarilyUnavailable("the service is temporarily unavailable", retry_after=2)
    )


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such endpoint"))
    if exc.status_code == 405:
        resp = error_response(MethodNotAllowed("method not allowed"))
        if exc.headers and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    err = OperatorError("the request could not be processed")
    err.status = exc.status_code
    return error_response(err)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return error_response(ServerError("internal error"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    OperatorError: operator_error,
    StoreUnavailable: store_unavailable,
    HTTPException: http_exception,
    Exception: server_error,
}

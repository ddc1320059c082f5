"""Bounds on a request's head (request line and headers), enforced while uvicorn parses it.

uvicorn keeps a request's head in memory however large it is: with httptools any number of
headers of any length reach the application, and h11 bounds only what it holds while a head
is still incomplete (16 KiB), not a head that arrives in one read. The protocol classes here
count what the parser reports (the request target, each header) against
:class:`~idtoken.settings.ServerSettings` and refuse a head over a bound with 414 (request
line) or 431 (headers) and the contract's error body. httptools holds a header line whose end
has not arrived yet without reporting it; the bytes received while the parser reports nothing
are counted against ``max_header_line`` instead, so no more than an allowed head and one read
are ever held. A WebSocket upgrade is an HTTP request parsed by these same classes before it
is handed to the WebSocket protocol, so it is bounded the same way.

A refusal writes the answer, shuts the sending side and reads and drops what the client still
sends for up to :data:`LINGER` seconds before closing (nginx's lingering close): closing a
socket with unread data makes the kernel reset the connection, and the reset can destroy the
answer before the client has read it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from idtoken.errors import OperatorError, RequestHeaderTooLarge, RequestLineTooLong
from idtoken.settings import ServerSettings

LINGER = 5.0  # seconds a refused connection keeps reading (and dropping) before it closes

log = logging.getLogger("idtoken.http")
_encode = json.JSONEncoder(separators=(",", ":")).encode


def http_protocol(implementation: str, limits: ServerSettings) -> type[asyncio.Protocol]:
    """What uvicorn's ``http=`` gets for ``serve --http IMPLEMENTATION`` (``h11``, or
    ``httptools`` for both ``httptools`` and ``auto``: uvicorn's "auto" is httptools when it is
    installed, and uvicorn[standard], a dependency, installs it)."""
    cls = LimitedH11Protocol if implementation == "h11" else LimitedHttpToolsProtocol
    # uvicorn calls it as it calls a protocol class; a partial of a module-level class with a
    # dataclass argument pickles, so it reaches the --workers processes too.
    return cast("type[asyncio.Protocol]", functools.partial(cls, limits=limits))


def longest_head(limits: ServerSettings) -> int:
    """The most bytes an allowed head can take: request line, header lines, their CRLFs and
    the empty line."""
    return limits.max_request_line + limits.max_header_bytes + 2 * limits.max_headers + 4


def _long_line(limits: ServerSettings) -> RequestLineTooLong:
    return RequestLineTooLong(f"the request line is longer than {limits.max_request_line} bytes")


def _long_field(limits: ServerSettings) -> RequestHeaderTooLarge:
    return RequestHeaderTooLarge(f"a header line is longer than {limits.max_header_line} bytes")


def _buffered(limits: ServerSettings, data: bytes, *, head: bool) -> OperatorError:
    """The error for a head (or trailer section) that has not ended within the bytes any
    allowed head has: 414 while a head's first line has not ended within the request line's
    bound, else 431."""
    if head and data.find(b"\n", 0, limits.max_request_line + 2) < 0:
        return _long_line(limits)
    return RequestHeaderTooLarge(f"the request head is longer than {longest_head(limits)} bytes")


def _answer(error: OperatorError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = _encode(error.body()).encode("utf-8")
    phrase = HTTPStatus(error.status).phrase.encode("ascii")
    parts = [b"HTTP/1.1 %d %s\r\n" % (error.status, phrase)]
    parts += [name + b": " + value + b"\r\n" for name, value in default_headers]
    parts.append(
        b"content-type: application/json\r\ncache-control: no-store\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    parts.append(body)
    return b"".join(parts)


class _Bounded:
    """Counting a request's head against the bounds, and refusing it; shared by both protocol
    classes. The counting runs for every header of every request: it is kept to a call, two
    additions and three comparisons."""

    transport: asyncio.Transport
    server_state: ServerState
    loop: asyncio.AbstractEventLoop
    dropping = False  # refused: what the client still sends is read and dropped
    _fields = 0  # header (and trailer) fields of the current request so far
    _field_bytes = 0  # ... and their bytes

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerSettings,
    ) -> None:
        # the uvicorn protocol class that follows this one in the subclass's bases
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self._limits = limits

    def _check_line(self, length: int) -> None:
        """The request line is ``length`` bytes long (without its CRLF), so far."""
        if length > self._limits.max_request_line:
            raise _long_line(self._limits)

    def _count_field(self, size: int) -> None:
        """One more header (or trailer) field, ``size`` bytes long as ``name: value``."""
        limits = self._limits
        self._fields += 1
        self._field_bytes += size
        if size > limits.max_header_line:
            raise _long_field(limits)
        if self._fields > limits.max_headers:
            raise RequestHeaderTooLarge(f"more than {limits.max_headers} header fields")
        if self._field_bytes > limits.max_header_bytes:
            raise RequestHeaderTooLarge(
                f"the header fields add up to more than {limits.max_header_bytes} bytes"
            )

    def refuse(self, error: OperatorError, *, answer: bool) -> None:
        """Answer ``error`` (when no response is under way) and close."""
        self.dropping = True
        log.warning(
            "request head refused",
            extra={"error": error.code, "status": error.status, "detail": error.description},
        )
        transport = self.transport
        if not answer or transport.is_closing():
            transport.close()
            return
        transport.write(_answer(error, self.server_state.default_headers))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.close)


class LimitedHttpToolsProtocol(_Bounded, HttpToolsProtocol):
    """uvicorn's httptools protocol with the head bounds counted in the parser callbacks.

    The callbacks call uvicorn's by name rather than through ``super()``: they run for every
    request, and every header of it."""

    _url = 0  # bytes of the request target so far
    _in_head = False  # from the first byte of a request to the end of its headers
    _in_message = False  # ... to the end of its body (and trailers)
    _reported = False  # the parser made a callback during this read
    _unreported = 0  # bytes read since the parser last made one
    _deferred: OperatorError | None = None  # a refusal waiting for earlier answers

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            return
        self._reported = False
        HttpToolsProtocol.data_received(self, data)
        if not self._in_message or self.dropping:
            return
        if self._reported:
            self._unreported = 0
            return
        # Nothing reported from a whole read: it all went into a line the parser holds.
        self._unreported += len(data)
        if self._unreported > self._limits.max_header_line:
            self._refuse(_long_field(self._limits))

    def _refuse(self, error: OperatorError) -> None:
        if not self._in_head:  # a trailer: the application has the request already
            self.refuse(error, answer=False)
        elif self.cycle is None or self.cycle.response_complete:
            self.refuse(error, answer=True)
        else:  # pipelined behind requests not answered yet: refuse once they are
            self.dropping = True
            self._deferred = error

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None and self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.refuse(self._deferred, answer=True)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error with 400; a refusal (raised in a callback below, to
        # stop the parser) has been answered already.
        if not self.dropping:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        self._in_head = self._in_message = self._reported = True
        self._url = self._fields = self._field_bytes = 0
        HttpToolsProtocol.on_message_begin(self)

    def on_url(self, url: bytes) -> None:
        self._reported = True
        self._url += len(url)
        try:
            # method SP target SP HTTP/x.y: llhttp reports the method before the target
            self._check_line(len(self.parser.get_method()) + self._url + 10)
        except OperatorError as error:
            self._refuse(error)
            raise
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._reported = True
        try:
            self._count_field(len(name) + len(value) + 2)
        except OperatorError as error:
            self._refuse(error)
            raise
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._reported = True
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self._reported = True
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        self._in_message = False
        HttpToolsProtocol.on_message_complete(self)


class _LimitedConnection(h11.Connection):
    """h11's server connection holding no more than an allowed head (or trailer section),
    passing every request and end of message it parses to ``check``."""

    def __init__(self, limits: ServerSettings, check: Callable[[h11.Event], None]) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=longest_head(limits))
        self._limits = limits
        self._check = check
        self.in_head = True  # the next event is a request's head: a refusal can be answered

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        self.in_head = self.their_state is h11.IDLE
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint != 431:  # h11's "receive buffer too long"
                raise
            raise _buffered(self._limits, self.trailing_data[0], head=self.in_head) from None
        if type(event) is h11.Request or type(event) is h11.EndOfMessage:
            self._check(event)
        return event


class LimitedH11Protocol(_Bounded, H11Protocol):
    """uvicorn's h11 protocol with the head bounds checked on every request h11 parses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limited = self.conn = _LimitedConnection(self._limits, self._check_event)

    def _check_event(self, event: h11.Event) -> None:
        if isinstance(event, h11.Request):
            self._fields = self._field_bytes = 0
            self._check_line(len(event.method) + len(event.target) + len(event.http_version) + 7)
        assert isinstance(event, h11.Request | h11.EndOfMessage)
        for name, value in event.headers:  # trailers count with the request's headers
            self._count_field(len(name) + len(value) + 2)

    def data_received(self, data: bytes) -> None:
        if not self.dropping:
            super().data_received(data)

    def handle_events(self) -> None:
        try:
            super().handle_events()
        except (RequestLineTooLong, RequestHeaderTooLarge) as error:
            # h11 parses a request's head only once the previous response is complete.
            self.refuse(error, answer=self._limited.in_head)

    def shutdown(self) -> None:
        if self.dropping:
            self.transport.close()
        else:
            super().shutdown()

"""Request heads are bounded while they are parsed (idtoken.httplimits, [server] settings).

Every test talks to a real ``idtoken-operator serve`` child process over a raw socket, once for
each HTTP implementation ``serve --http`` offers (``auto`` is httptools). An over-long request
line is answered 414 ``request_line_too_long``; too many header fields, a too long header line
or too many header bytes 431 ``request_header_too_large``; both with the contract's error body,
after which the server closes the connection. A WebSocket upgrade request is bounded the same
way, and a head exactly at every bound is served.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from idtoken.errors import ConfigError
from idtoken.settings import ServerSettings, parse_settings
from support import OperatorConfig, OperatorProcess

LIMITS = ServerSettings()  # the defaults, which the operators below run with
MIB = 1 << 20
WS_HEADERS = [
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]
WS_TARGET = b"/ws/session/x"  # an unknown session: accepted, then closed with 4004
CLOSE_4004 = b"\x88\x02\x0f\xa4"  # an unmasked close frame with code 4004


# ----------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Kind:
    """A plain request or a WebSocket upgrade, and what serving it looks like."""

    name: str
    target: bytes
    headers: tuple[bytes, ...]

    def head(self, target: bytes | None = None, extra: list[bytes] | None = None) -> bytes:
        lines = [b"GET " + (target or self.target) + b" HTTP/1.1", *self.base(), *(extra or [])]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def base(self) -> list[bytes]:
        return [b"Host: 127.0.0.1", *self.headers]

    def served(self, answer: bytes) -> bool:
        if self.name == "http":
            return answer.startswith(b"HTTP/1.1 200 ")
        return answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(CLOSE_4004)


HTTP = Kind("http", b"/healthz", (b"Connection: close",))
WS = Kind("ws", WS_TARGET, tuple(WS_HEADERS))


def padded_target(kind: Kind, line: int) -> bytes:
    """``kind``'s target with a query that makes the request line ``line`` bytes long."""
    fixed = len(b"GET  HTTP/1.1") + len(kind.target) + len(b"?pad=")
    return kind.target + b"?pad=" + b"a" * (line - fixed)


def header(name: bytes, size: int) -> bytes:
    """A header line of exactly ``size`` bytes (``name: value``)."""
    return name + b": " + b"v" * (size - len(name) - 2)


def at_bounds(
    kind: Kind, *, headers: int, header_bytes: int, longest: int = LIMITS.max_header_line
) -> list[bytes]:
    """Extra header lines bringing ``kind``'s head to ``headers`` fields of ``header_bytes``
    bytes in all, one of them ``longest`` bytes long."""
    base = kind.base()
    fillers = headers - len(base) - 1
    remaining = header_bytes - sum(len(line) for line in base) - longest
    size, rest = divmod(remaining, fillers)
    extra = [header(b"X-Long", longest)]
    extra += [header(b"X-F%02d" % i, size + (i < rest)) for i in range(fillers)]
    return extra


def at_limit(kind: Kind) -> bytes:
    """A head exactly at every default bound."""
    return kind.head(
        padded_target(kind, LIMITS.max_request_line),
        at_bounds(kind, headers=LIMITS.max_headers, header_bytes=LIMITS.max_header_bytes),
    )


# ----------------------------------------------------------------------------- sockets
def exchange(port: int, data: bytes, done: Callable[[bytes], bool] | None = None) -> bytes:
    """Send ``data``, then read until the server closes (or ``done`` says the answer is
    complete); everything the server answered. A reset fails the test: a refusal must
    reach the client."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        answer = b""
        while not (done and done(answer)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def ask(port: int, kind: Kind, data: bytes) -> bytes:
    # A served upgrade stays open until the close handshake: stop at the server's close frame.
    return exchange(port, data, WS.served if kind is WS else None)


def refusal(answer: bytes) -> tuple[int, dict[str, str]]:
    """The status and error body of a refusal, checking its form on the way."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error: dict[str, str] = json.loads(body)
    assert set(error) == {"error", "error_description"}
    return int(status_line.split(" ")[1]), error


def assert_refused(port: int, data: bytes, status: int, code: str) -> str:
    got, error = refusal(exchange(port, data))
    assert (got, error["error"]) == (status, code), error
    return error["error_description"]


def assert_healthy(proc: OperatorProcess) -> None:
    assert proc.process is not None and proc.process.poll() is None
    for kind in (HTTP, WS):
        assert kind.served(ask(proc.port, kind, kind.head())), kind.name


# ----------------------------------------------------------------------------- operators
@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return OperatorConfig(tmp_path_factory.mktemp("header-limits")).write()


@pytest.fixture(scope="module", params=["auto", "httptools", "h11"])
def operator(request: pytest.FixtureRequest, config_file: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(config_file, args=("--http", request.param)) as proc:
        yield proc
        assert_healthy(proc)


KINDS = pytest.mark.parametrize("kind", [HTTP, WS], ids=lambda k: k.name)


# ----------------------------------------------------------------------------- the heads
@KINDS
def test_a_1_mib_header_line_is_refused_with_431(operator: OperatorProcess, kind: Kind) -> None:
    data = kind.head(extra=[header(b"X-Big", MIB)])
    assert_refused(operator.port, data, 431, "request_header_too_large")
    assert_healthy(operator)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_32_mib_header_line_is_never_held(operator: OperatorProcess) -> None:
    """The line is refused while it streams in, and what follows is dropped as it arrives:
    the server's peak memory grows by far less than the line."""
    assert operator.process is not None
    before = peak_rss_kib(operator.process.pid)
    data = HTTP.head(extra=[header(b"X-Huge", 32 * MIB)])
    assert_refused(operator.port, data, 431, "request_header_too_large")
    grown = peak_rss_kib(operator.process.pid) - before
    assert grown < 8 * 1024, f"the server's peak memory grew by {grown} KiB"


@KINDS
def test_2000_header_lines_are_refused_with_431(operator: OperatorProcess, kind: Kind) -> None:
    data = kind.head(extra=[b"X-H%04d: v" % i for i in range(2000)])
    assert_refused(operator.port, data, 431, "request_header_too_large")
    assert_healthy(operator)


@KINDS
def test_a_1_mib_request_line_is_refused_with_414(operator: OperatorProcess, kind: Kind) -> None:
    data = kind.head(padded_target(kind, MIB))
    assert_refused(operator.port, data, 414, "request_line_too_long")
    assert_healthy(operator)


# ----------------------------------------------------------------------------- the exact bounds
@KINDS
def test_a_head_at_every_bound_is_served(operator: OperatorProcess, kind: Kind) -> None:
    data = at_limit(kind)
    assert len(data) > 24_000  # request line 8190, 100 fields of 16384 bytes, one of 8190
    assert kind.served(ask(operator.port, kind, data))


@KINDS
def test_one_byte_over_the_request_line_is_refused(operator: OperatorProcess, kind: Kind) -> None:
    data = kind.head(padded_target(kind, LIMITS.max_request_line + 1))
    text = assert_refused(operator.port, data, 414, "request_line_too_long")
    assert text == "the request line is longer than 8190 bytes"


@KINDS
@pytest.mark.parametrize(
    ("headers", "header_bytes", "longest", "text"),
    [
        (LIMITS.max_headers + 1, 9000, 100, "more than 100 header fields"),
        (50, 9000, LIMITS.max_header_line + 1, "a header line is longer than 8190 bytes"),
        (
            LIMITS.max_headers,
            LIMITS.max_header_bytes + 1,
            LIMITS.max_header_line,
            "the header fields add up to more than 16384 bytes",
        ),
    ],
    ids=["fields", "line", "bytes"],
)
def test_one_over_a_header_bound_is_refused(
    operator: OperatorProcess, kind: Kind, headers: int, header_bytes: int, longest: int, text: str
) -> None:
    extra = at_bounds(kind, headers=headers, header_bytes=header_bytes, longest=longest)
    data = kind.head(extra=extra)
    assert assert_refused(operator.port, data, 431, "request_header_too_large") == text


def test_each_request_on_a_connection_has_its_own_bounds(operator: OperatorProcess) -> None:
    """Three pipelined requests of 60 fields each are served: the count starts afresh for
    each request. A fourth, over a bound, is refused after the answers to the first three."""
    fields = [b"X-F%02d: v" % i for i in range(60)]
    keep = Kind("http", b"/healthz", ())
    data = keep.head(extra=fields) * 3 + keep.head(extra=[header(b"X-Big", MIB)])
    answer = exchange(operator.port, data)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    last = answer[answer.rindex(b"HTTP/1.1 ") :]
    assert refusal(last)[1]["error"] == "request_header_too_large"


# ----------------------------------------------------------------------------- trailers
def chunked(trailers: list[bytes]) -> bytes:
    """A chunked POST with ``trailers``, and a request for /healthz pipelined after it."""
    return (
        b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n" + b"".join(line + b"\r\n" for line in trailers) + b"\r\n"
    ) + HTTP.head()


@pytest.mark.parametrize(
    "trailers",
    [[b"X-T%04d: v" % i for i in range(2000)], [header(b"X-Big", MIB)]],
    ids=["2000-fields", "1-MiB-line"],
)
def test_trailers_count_with_the_headers(operator: OperatorProcess, trailers: list[bytes]) -> None:
    """Trailers come after the application has its request: over a bound, the connection
    is closed, so the request pipelined after them is not served (the POST's own answer
    may have gone out before; no 431 can follow it)."""
    try:
        answer = exchange(operator.port, chunked(trailers))
    except (ConnectionResetError, BrokenPipeError):  # closed with what was sent unread
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 404 ")
    assert answer.count(b"HTTP/1.1 ") <= 1


def test_trailers_within_the_bounds_are_accepted(operator: OperatorProcess) -> None:
    answer = exchange(operator.port, chunked([b"X-T%02d: v" % i for i in range(50)]))
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 1


# ----------------------------------------------------------------------------- configuration
@pytest.fixture(scope="module")
def tight_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    server = "[server]\nmax_request_line = 2000\nmax_headers = 40\nmax_header_bytes = 4096\n"
    return OperatorConfig(tmp_path_factory.mktemp("tight"), extra=server).write()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_configured_bounds_apply_in_every_worker(tight_config: Path, http: str) -> None:
    """``[server]`` bounds reach the worker processes of ``--workers 2``."""
    args = ("--http", http, "--workers", "2")
    with OperatorProcess(tight_config, args=args) as proc:
        fields = [b"X-F%02d: v" % i for i in range(40 - len(HTTP.base()))]
        for _ in range(10):  # both workers accept connections from the shared socket
            assert HTTP.served(ask(proc.port, HTTP, HTTP.head(extra=fields)))
            over = HTTP.head(extra=[*fields, b"X-One-More: v"])
            assert assert_refused(proc.port, over, 431, "request_header_too_large") == (
                "more than 40 header fields"
            )
            line = HTTP.head(padded_target(HTTP, 2001))
            assert_refused(proc.port, line, 414, "request_line_too_long")
        assert_healthy(proc)
        assert '"msg": "request head refused"' in proc.logs()


def test_server_settings_are_checked() -> None:
    base = {"issuer": "https://auth.example.com"}
    settings = parse_settings(base, base_dir=Path("/"), environ={})
    assert settings.server == ServerSettings(8190, 8190, 16384, 100)
    raw = {**base, "server": {"max_headers": 64, "max_header_bytes": 32768}}
    server = parse_settings(raw, base_dir=Path("/"), environ={}).server
    assert (server.max_headers, server.max_header_bytes) == (64, 32768)
    for table, message in (
        ({"max_header_line": 8191}, "server.max_header_line: must be an integer between"),
        ({"max_request_line": 10}, "server.max_request_line: must be an integer between"),
        ({"max_headers": 129}, "server.max_headers: must be an integer between 32 and 128"),
        ({"max_header_size": 1}, "server.max_header_size: unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_settings({**base, "server": table}, base_dir=Path("/"), environ={})

"""Headless Chromium around the hosted login page (tests/test_oidc_browser.py): a tab that
records everything the browser does, the client's loopback redirect target, and a relay to
the operator that can be unplugged.

Chromium is Debian's, driven by Playwright's async API (the operator runs in the test's event
loop), with the flags of tests/test_demo_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, WebSocket, async_playwright

from oidc_support import query_of
from support import REPO
from test_demo_browser import CHROMIUM, CHROMIUM_ARGS

SHOTS = REPO / "test-output" / "screenshots"
PHONE = {"width": 360, "height": 640}
WAIT = 10_000  # ms


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def until(check: Callable[[], object], what: str) -> None:
    """Wait (up to ten seconds) for ``check()`` to be true."""
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


# ----------------------------------------------------------------------------- the client
class Callback:
    """The client's redirect target on its own loopback origin: it records every request and
    answers with a plain page naming the path; ``/frame?src=…`` frames ``src`` and, as a
    control, a page of its own origin."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                path = urlsplit(self.path).path
                if path == "/frame":
                    src = html.escape(query_of(self.path)["src"], quote=True)
                    body = f'<iframe id="login" src="{src}"></iframe>'
                    body += '<iframe id="own" src="/own"></iframe>'
                else:
                    body = f'<p id="arrived">{html.escape(path)}</p>'
                data = f"<!doctype html><title>client</title>{body}".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.redirect_uri = f"{self.origin}/callback"

    def arrivals(self) -> list[dict[str, str]]:
        """The queries of the requests that reached the redirect URI."""
        return [query_of(p) for p in self.requests if p.split("?")[0] == "/callback"]

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[Callback]:
        client = cls()
        thread = threading.Thread(target=client.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield client
        finally:
            client.server.shutdown()
            client.server.server_close()
            thread.join()


# ----------------------------------------------------------------------------- the tab
# Injected by the browser itself, outside the page's policy: every violation it reports.
_REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation",
  (e) => window.reportViolation(`${e.violatedDirective} ${e.blockedURI}`));"""


@dataclass
class Tab:
    """A phone-sized page in its own browser context, and everything it did."""

    page: Page
    requests: list[str] = field(default_factory=list)  # every URL asked for, refused or not
    sockets: list[WebSocket] = field(default_factory=list)
    received: list[list[str]] = field(default_factory=list)  # each socket's messages
    console: list[str] = field(default_factory=list)  # errors, warnings, script errors
    violations: list[str] = field(default_factory=list)  # "directive blocked-uri"

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, browser: Browser) -> AsyncIterator[Tab]:
        context = await browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
        context.set_default_timeout(WAIT)
        tab = cls(await context.new_page())
        context.on("request", lambda request: tab.requests.append(request.url))
        tab.page.on("websocket", tab._on_socket)
        tab.page.on("console", tab._on_console)
        tab.page.on("pageerror", lambda exc: tab.console.append(f"pageerror: {exc}"))
        await context.expose_function("reportViolation", lambda v: tab.violations.append(v))
        await context.add_init_script(_REPORT_VIOLATIONS)
        try:
            yield tab
        finally:
            await context.close()

    def _on_socket(self, socket: WebSocket) -> None:
        messages: list[str] = []
        self.sockets.append(socket)
        self.received.append(messages)
        socket.on("framereceived", lambda payload: messages.append(str(payload)))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"oidc-{name}.png", full_page=True)

    def assert_quiet(self) -> None:
        """No console error or warning, script error or policy violation."""
        assert not self.console, self.console
        assert not self.violations, self.violations

    def assert_clean(self, origin: str, callback: Callback) -> None:
        """Quiet; every request went to ``origin``, then to the redirect URI; every socket to
        ``origin``."""
        self.assert_quiet()
        origins = [f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in self.requests]
        left = origins.index(callback.origin)
        assert set(origins[:left]) == {origin}, self.requests
        assert set(origins[left:]) == {callback.origin}, self.requests
        ws = origin.replace("http://", "ws://") + "/ws/session/"
        assert self.sockets and all(s.url.startswith(ws) for s in self.sockets), self.sockets


# ----------------------------------------------------------------------------- a lost socket
class Cable:
    """A loopback TCP relay in front of the operator that the test can unplug: every
    connection through it is cut and new ones are refused until it is plugged back in, as a
    phone's browser sees a tunnel. (Playwright's ``set_offline`` fails new requests but leaves
    open WebSockets talking, so it cannot take a socket away.)"""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = str(parts.hostname), int(parts.port or 80)
        self.unplugged = False
        self.refused = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Cable:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        self.unplug()
        await self.server.wait_closed()

    def unplug(self) -> None:
        self.unplugged = True
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    def plug(self) -> None:
        self.unplugged = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.unplugged:
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}

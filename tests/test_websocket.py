"""The browser's socket, /ws/session/{sessionId}?token={wsToken} (wire contract §1).

Every test runs the operator on a real uvicorn server with a real Redis and talks to it with the
``websockets`` client, as a browser would. Catalogue rows: S02 (another session's wsToken),
S07 (client frames are ignored), S08 (unknown and malformed session ids), M07 (oversized
frames), D03 (a flood of bad handshakes).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from conftest import Operator, OperatorFactory
from idtoken.client import Device, Initiation, RelyingParty
from idtoken.clock import ManualClock
from support import (
    DEFAULT_SERVICE,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    closed_code,
    otp_ready,
    recv_json,
)

SHOP_ORIGIN = "https://shop.example"
GUARDED = {
    **DEFAULT_SERVICE,
    "id": "guarded",
    "name": "Guarded Shop",
    "audience": "guarded-audience",
    "allowed_origins": [SHOP_ORIGIN],
}
QUICK = {**DEFAULT_SERVICE, "id": "quick", "name": "Quick Shop", "session_ttl": 10}


# ----------------------------------------------------------------------------- helpers
def ws_url(base_url: str, session_id: str, token: str | None) -> str:
    """A socket URL with any session id and token (``None``: no ``token`` parameter at all)."""
    url = "ws" + base_url.removeprefix("http") + "/ws/session/" + quote(session_id, safe="")
    return url if token is None else f"{url}?token={quote(token, safe='')}"


async def drain(
    url: str, *, origin: str | None = None, timeout: float = 10.0
) -> tuple[list[Any], int | None]:
    """Connect, read every frame until the server closes; return (frames, close code).

    Text frames that are JSON are decoded; anything else is kept as received."""
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        async with websockets.connect(
            url, compression=None, origin=Origin(origin) if origin is not None else None
        ) as sock:
            try:
                async for raw in sock:
                    try:
                        frames.append(json.loads(raw))
                    except (ValueError, TypeError):
                        frames.append(raw)
            except websockets.ConnectionClosed:
                pass
    return frames, sock.close_code


async def assert_silent_and_open(sock: websockets.ClientConnection, quiet: float = 0.3) -> None:
    """Nothing arrives for ``quiet`` seconds and the connection still answers a ping."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sock.recv(), quiet)
    pong = await sock.ping()
    await asyncio.wait_for(pong, 5)
    assert sock.close_code is None


async def login_parts(
    op: Operator, token_id: str, service_id: str = "shop"
) -> tuple[Device, RelyingParty, Initiation]:
    device = await op.enrolled(token_id)
    rp = op.rp(service_id)
    started = await rp.initiate(token_id)
    return device, rp, started


async def approve_and_expect(
    sock: websockets.ClientConnection, device: Device, rp: RelyingParty, started: Initiation
) -> dict[str, Any]:
    """The device approves; the open socket receives ``approved`` (hash checked), then 1000."""
    resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
    assert resp.status_code == 200, resp.text
    approved = await recv_json(sock)
    assert approved["type"] == "approved"
    assert rp.hash_ok(started, approved)
    assert await closed_code(sock) == 1000
    claims = await rp.verify_jwt(approved["jwt"], session_id=started.session_id)
    assert claims["sub"] == device.enrollment.token_id  # type: ignore[union-attr]
    return approved


# ----------------------------------------------------------------------------- close codes
async def test_wrong_token_for_the_session_closes_4001_with_nothing_sent(
    operator: Operator,
) -> None:
    """S02: session A's wsToken presented on /ws/session/B."""
    _, _, a = await login_parts(operator, "user-a")
    device_b, rp_b, b = await login_parts(operator, "user-b")
    base = operator.base_url
    cases = [
        a.ws_token,  # another session's valid token
        "",  # empty
        None,  # no token parameter at all
        secrets.token_urlsafe(24),  # random, right shape
        b.ws_token[:-1],  # one character short
        b.ws_token + "A",  # one character more
        b.ws_token.upper() if b.ws_token.upper() != b.ws_token else b.ws_token.lower(),
        "x" * 2000,
    ]
    for token in cases:
        frames, code = await drain(ws_url(base, b.session_id, token))
        assert (frames, code) == ([], 4001), token

    # Nothing changed: each session's own socket still works, with its own data.
    async with websockets.connect(rp_b.socket_url(b), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(b)
        await approve_and_expect(sock, device_b, rp_b, b)
    async with websockets.connect(ws_url(base, a.session_id, a.ws_token), compression=None) as s:
        assert await recv_json(s) == otp_ready(a)
        await assert_silent_and_open(s)


async def test_a_bad_token_does_not_replace_the_live_socket(operator: Operator) -> None:
    """A failed handshake must not claim the session (no 4009 for the real browser)."""
    _, _, a = await login_parts(operator, "user-a")
    device, rp, b = await login_parts(operator, "user-b")
    async with websockets.connect(rp.socket_url(b), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(b)
        for token in (a.ws_token, "nope", ""):
            assert await drain(ws_url(operator.base_url, b.session_id, token)) == ([], 4001)
        await assert_silent_and_open(sock)
        await approve_and_expect(sock, device, rp, b)


MALFORMED_SESSION_IDS = [
    "sess_" + "!" * 10,
    "sess_a|b",
    "a" * 129,
    "sess_ünïcode",
    "sess_ space",
    "..",
    "sess_%00",
]


async def test_unknown_and_malformed_session_ids_close_4004_whatever_the_token(
    operator: Operator,
) -> None:
    """S08: random, malformed and well-formed-but-unknown ids; no message, same code."""
    _, _, real = await login_parts(operator, "user-1")
    session_ids = [
        "sess_" + secrets.token_urlsafe(16),  # looks exactly like a real one
        "sess_" + secrets.token_urlsafe(16),
        real.session_id + "x",
        real.session_id[:-1],
        "x",
        *MALFORMED_SESSION_IDS,
    ]
    tokens = [real.ws_token, secrets.token_urlsafe(24), "", None]
    for session_id in session_ids:
        for token in tokens:
            frames, code = await drain(ws_url(operator.base_url, session_id, token))
            assert (frames, code) == ([], 4004), (session_id, token)


async def test_an_expired_and_discarded_session_closes_4004_like_a_random_id(
    operator: Operator, redis_srv: RedisServer
) -> None:
    """S08, expired ids: once a session's keys have expired in Redis (lifetime + the result's
    keep time), its id is unknown, even with its own wsToken."""
    _, _, started = await login_parts(operator, "user-1")
    keys = [
        k
        for k in redis_srv.cli("KEYS", "idtoken:*").splitlines()
        if k.endswith(f":sess:{started.session_id}") or k.endswith(f"{{{started.session_id}}}")
    ]
    assert len(keys) == 2, keys  # the session and its socket reference
    for key in keys:
        redis_srv.cli("PEXPIRE", key, "1")
    await asyncio.sleep(0.05)
    for token in (started.ws_token, secrets.token_urlsafe(24)):
        frames, code = await drain(ws_url(operator.base_url, started.session_id, token))
        assert (frames, code) == ([], 4004), token


async def test_after_a_terminal_message_the_server_closes_1000(operator: Operator) -> None:
    device = await operator.enrolled("user-1")
    rp = operator.rp()

    # approved
    started = await rp.initiate("user-1")
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await approve_and_expect(sock, device, rp, started)

    # rejected, both reasons; and a late socket gets the same message at once, then 1000
    for reason, text in (("user_rejected", "User rejected"), ("not_me", "Not me")):
        started = await rp.initiate("user-1")
        async with websockets.connect(rp.socket_url(started), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(started)
            resp = await device.reject(started.session_id, reason)
            assert resp.status_code == 200, resp.text
            assert await recv_json(sock) == {"type": "rejected", "reason": text}
            assert await closed_code(sock) == 1000
        frames, code = await drain(rp.socket_url(started))
        assert (frames, code) == ([{"type": "rejected", "reason": text}], 1000)


async def test_late_socket_after_approval_gets_the_result_at_once_and_1000(
    operator: Operator,
) -> None:
    device, rp, started = await login_parts(operator, "user-1")
    resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
    assert resp.status_code == 200
    for _ in range(2):  # as often as the browser reconnects
        frames, code = await drain(rp.socket_url(started))
        assert code == 1000
        assert [f["type"] for f in frames] == ["approved"]
        assert rp.hash_ok(started, frames[0])
    # a wrong token still gets nothing, not even after the decision
    assert await drain(ws_url(operator.base_url, started.session_id, "bad")) == ([], 4001)


async def test_approval_racing_the_socket_open_always_arrives_then_1000(
    operator: Operator,
) -> None:
    """The decision lands while the socket is being set up (the event and the socket's own
    read both see it): the browser still gets exactly one ``approved`` and a clean 1000,
    never a dropped connection (1006)."""
    tokens = [f"race-{i}" for i in range(3)]
    by_token = dict(zip(tokens, await asyncio.gather(*map(operator.enrolled, tokens)), strict=True))
    rp = operator.rp()
    outcomes: list[tuple[list[str], int | None]] = []
    for round_ in range(8):
        owners = tokens * 3  # three pending sessions per token: the cap
        started = await asyncio.gather(*map(rp.initiate, owners))
        devices = [by_token[t] for t in owners]

        async def approve(device: Device, s: Initiation, delay: float) -> None:
            await asyncio.sleep(delay)
            resp = await device.approve(s.session_id, s.auto_password, ["identity:name"])
            assert resp.status_code == 200, resp.text

        results = await asyncio.gather(
            *(drain(rp.socket_url(s)) for s in started),
            *(
                approve(d, s, 0.0005 * ((i + round_) % 10))
                for i, (d, s) in enumerate(zip(devices, started, strict=True))
            ),
        )
        for s, (frames, code) in zip(started, results[: len(started)], strict=True):
            kinds = [f["type"] for f in frames]
            outcomes.append((kinds, code))
            if kinds[-1:] == ["approved"]:
                assert rp.hash_ok(s, frames[-1])
    assert all(kinds[-1:] == ["approved"] and code == 1000 for kinds, code in outcomes), [
        o for o in outcomes if o[0][-1:] != ["approved"] or o[1] != 1000
    ]
    assert {tuple(kinds) for kinds, _ in outcomes} <= {("approved",), ("otp_ready", "approved")}


# ----------------------------------------------------------------------------- origins
@pytest.fixture
async def guarded(make_operator: OperatorFactory, redis_url: str) -> Any:
    async with make_operator(services=[dict(DEFAULT_SERVICE), dict(GUARDED)]) as op:
        yield op


async def test_allowed_origin_handshake_works(guarded: Operator) -> None:
    device, rp, started = await login_parts(guarded, "user-1", "guarded")
    async with websockets.connect(
        rp.socket_url(started), compression=None, origin=Origin(SHOP_ORIGIN)
    ) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await approve_and_expect(sock, device, rp, started)


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "https://evil.example",
        "http://shop.example",
        "https://shop.example.evil.example",
        "https://evil.shop.example",
        "https://shop.example:8443",
        "https://shop.example/",
        "HTTPS://SHOP.EXAMPLE",
        "null",
        "",
    ],
)
async def test_other_origins_are_refused_with_403(guarded: Operator, origin: str | None) -> None:
    device, rp, started = await login_parts(guarded, "user-1", "guarded")
    headers = {"Origin": origin} if origin == "" else None
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            rp.socket_url(started),
            compression=None,
            origin=Origin(origin) if origin else None,
            additional_headers=headers,
        ):
            pass
    assert info.value.response.status_code == 403
    assert started.auto_password.encode() not in info.value.response.body
    # The refused handshake changed nothing: the real page still gets its socket.
    async with websockets.connect(
        rp.socket_url(started), compression=None, origin=Origin(SHOP_ORIGIN)
    ) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await approve_and_expect(sock, device, rp, started)


@pytest.mark.parametrize("origin", [None, "https://evil.example", SHOP_ORIGIN, "null"])
async def test_service_without_allowed_origins_accepts_any_origin(
    guarded: Operator, origin: str | None
) -> None:
    _, rp, started = await login_parts(guarded, "user-1", "shop")
    async with websockets.connect(
        rp.socket_url(started),
        compression=None,
        origin=Origin(origin) if origin is not None else None,
    ) as sock:
        assert await recv_json(sock) == otp_ready(started)


# ----------------------------------------------------------------------------- client frames
async def test_client_frames_are_ignored_and_change_nothing(operator: Operator) -> None:
    """S07: a browser (or attacker holding the socket) cannot push state through it."""
    device, rp, started = await login_parts(operator, "user-1")
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        forged = [
            json.dumps({"type": "approved"}),
            json.dumps(
                {
                    "type": "approved",
                    "jwt": "e30.e30.",
                    "hash": "0" * 64,
                    "random": started.random,
                    "expiresAt": started.expires_at,
                }
            ),
            json.dumps({"type": "rejected", "reason": "User rejected"}),
            json.dumps({"type": "expired"}),
            json.dumps({"type": "otp_ready", "sessionId": started.session_id}),
            "junk {",
            "",
            "\x00\x01\x02",
            "null",
            "[]",
        ]
        for text in forged:
            await sock.send(text)
        for data in (b"", b"\x00\xff\xfe binary", json.dumps({"type": "approved"}).encode()):
            await sock.send(data)
        await assert_silent_and_open(sock)

        # State unchanged: still pending for the app, and the device can still approve.
        assert [s["sessionId"] for s in await device.pending()] == [started.session_id]
        await approve_and_expect(sock, device, rp, started)


# ----------------------------------------------------------------------------- frame sizes
@pytest.mark.parametrize(
    "frame",
    [
        "x" * 65536,
        "x" * 4097,
        "é" * 2049,  # 4098 bytes in UTF-8: the limit counts bytes, not characters
        b"\x00" * 65536,
    ],
    ids=["64KiB-text", "4KiB+1-text", "4KiB+2-utf8-text", "64KiB-binary"],
)
async def test_oversized_frame_closes_1009(operator: Operator, frame: str | bytes) -> None:
    """M07."""
    device, rp, started = await login_parts(operator, "user-1")
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await sock.send(frame)
        assert await closed_code(sock) == 1009
    # The session is untouched: a new socket works and gets the decision.
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await approve_and_expect(sock, device, rp, started)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_m07_oversized_frames_leave_the_server_memory_flat(
    tmp_path: Path, redis_url: str
) -> None:
    """M07 "memory flat": 400 sockets, one after another, each sending a 64 KiB frame and
    closed with 1009, in a real operator process. Were the frames (or their sockets) kept,
    that would be over 25 MiB; the server's resident memory grows by far less."""
    limits = {"max_pending_per_token": 100, "pushes_per_token_per_10min": 1000}
    cfg = OperatorConfig(tmp_path / "m07", redis_url=redis_url, limits=limits)
    frame = b"x" * 65536
    with OperatorProcess(cfg.write()) as proc:
        assert proc.process is not None
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            rps = []
            for n in range(5):
                await Device(http, device_id=f"m07-{n}").enroll(cfg.issuers[0].mint(f"m07-{n}"))
                rps.append(f"m07-{n}")
            rp = RelyingParty(http, service_id="shop", issuer=cfg.issuer_url)

            async def oversized(i: int) -> None:
                started = await rp.initiate(rps[i % len(rps)])
                async with websockets.connect(rp.socket_url(started), compression=None) as sock:
                    assert await recv_json(sock) == otp_ready(started)
                    await sock.send(frame)
                    assert await closed_code(sock) == 1009

            for i in range(50):  # warm-up: code paths, allocator pools
                await oversized(i)
            before = rss_kib(proc.process.pid)
            for i in range(50, 450):
                await oversized(i)
            grown = rss_kib(proc.process.pid) - before
    assert grown < 8 * 1024, f"the server grew by {grown} KiB over 400 oversized frames"


@pytest.mark.parametrize(
    "frame", ["x" * 4000, "x" * 4096, "é" * 2048], ids=["4000", "4096", "4096-utf8"]
)
async def test_frame_within_4kib_is_ignored_and_socket_stays_open(
    operator: Operator, frame: str
) -> None:
    device, rp, started = await login_parts(operator, "user-1")
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        for _ in range(3):
            await sock.send(frame)
        await assert_silent_and_open(sock)
        await approve_and_expect(sock, device, rp, started)


# ----------------------------------------------------------------------------- expiry
async def test_expiry_by_the_sockets_own_timer(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(time.time())
    async with make_operator(clock=clock) as op:
        device, rp, started = await login_parts(op, "user-1")
        clock.advance(61)  # default session_ttl is 60 s
        frames, code = await drain(rp.socket_url(started))
        assert frames[-1] == {"type": "expired"}
        assert code == 1000
        resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
        assert resp.status_code == 410, resp.text
        assert resp.json()["error"] == "session_expired"
        # A later socket gets the same terminal message at once.
        assert await drain(rp.socket_url(started)) == ([{"type": "expired"}], 1000)


async def test_socket_opened_after_expiry_gets_only_expired(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """otp_ready is sent "while the session is pending"; past expiresAt it is not, so the first
    connect must not offer the (dead) code before saying ``expired``."""
    clock = ManualClock(time.time())
    async with make_operator(clock=clock) as op:
        _, rp, started = await login_parts(op, "user-1")
        clock.advance(61)
        assert await drain(rp.socket_url(started)) == ([{"type": "expired"}], 1000)


@pytest.mark.slow
async def test_idle_socket_receives_expired_in_real_time(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """D03 (second half): a valid idle socket is closed at session end."""
    async with make_operator(services=[dict(DEFAULT_SERVICE), dict(QUICK)]) as op:
        device, rp, started = await login_parts(op, "user-1", "quick")
        t0 = time.monotonic()
        async with websockets.connect(rp.socket_url(started), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(started)
            message = await recv_json(sock, timeout=12)
            elapsed = time.monotonic() - t0
            assert message == {"type": "expired"}
            assert await closed_code(sock) == 1000
        assert 8.5 <= elapsed <= 12, elapsed
        resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
        assert resp.status_code == 410 and resp.json()["error"] == "session_expired"


# ----------------------------------------------------------------------------- flood
async def test_500_bad_handshakes_are_refused_and_service_continues(operator: Operator) -> None:
    """D03: bad-token handshakes against one session are refused; a good socket still works."""
    device, rp, started = await login_parts(operator, "user-1")
    t0 = time.monotonic()
    codes: list[tuple[list[Any], int | None]] = []
    for batch in range(10):
        codes += await asyncio.gather(
            *(
                drain(ws_url(operator.base_url, started.session_id, f"bad-{batch}-{i}"))
                for i in range(50)
            )
        )
    elapsed = time.monotonic() - t0
    assert len(codes) == 500
    assert all(result == ([], 4001) for result in codes), {repr(r) for r in codes}
    assert elapsed < 60, elapsed  # cheap: no per-attempt sleep or lockout on the server
    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        assert await recv_json(sock) == otp_ready(started)
        await approve_and_expect(sock, device, rp, started)

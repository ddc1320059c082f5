"""Malformed input on every JSON endpoint (catalogue M01-M06, A07).

Each case sends one hostile request and then checks three things: the answer is the contract's
(status, and an error body of exactly ``{"error", "error_description"}`` with no Python text),
the store is unchanged ("∅": no session, device, replay marker or failure count written; rate
counters excepted), and the same request made well-formed still succeeds, which proves that
the refusal came from the defect under test and that the hostile request consumed nothing.

One operator serves the whole module (there are hundreds of cases); every case gets its own
token, device, session and enrollment token, so cases never see each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Operator
from idtoken.app import create_app
from idtoken.client import Device, Initiation
from idtoken.settings import load_settings
from support import OperatorConfig, RedisServer, b64url, serve_in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

INITIATE = "/auth/initiate"
ENROLL = "/enroll"
VERIFY = "/auth/verify"
REJECT = "/auth/reject"
PENDING = "/auth/pending"
ENDPOINTS = [INITIATE, ENROLL, VERIFY, REJECT, PENDING]
SUCCESS = {INITIATE: 201, ENROLL: 201, VERIFY: 200, REJECT: 200, PENDING: 200}

# The field each endpoint identifies its subject by: byte-level corruption goes into its value.
ID_FIELD = {
    INITIATE: "tokenId",
    ENROLL: "deviceId",
    VERIFY: "sessionId",
    REJECT: "sessionId",
    PENDING: "tokenId",
}
# A field whose value can be replaced by a raw JSON number (M05).
NUMBER_FIELD = {
    INITIATE: "nonce",
    ENROLL: "timestamp",
    VERIFY: "timestamp",
    REJECT: "timestamp",
    PENDING: "timestamp",
}

MAX_BODY = 64 * 1024
PYTHON_TEXT = (
    "Traceback",
    'File "',
    "Exception",
    "Error:",
    ".py",
    "json.",
    "Expecting",
    "codec",
    "utf-8' codec",
    "line 1",
    "NoneType",
)


# ----------------------------------------------------------------------------- the server
@dataclass
class Server:
    op: Operator
    redis: aioredis.Redis


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    redis_srv.cli("FLUSHALL")
    cfg = OperatorConfig(
        Path(tmp_path_factory.mktemp("malformed")),
        redis_url=redis_srv.url,
        limits={
            "max_pending_per_token": 100,
            "pushes_per_token_per_10min": 1000,
            "enroll_per_ip_per_hour": 100_000,
        },
    )
    settings = load_settings(cfg.write())
    app = create_app(settings)
    client = aioredis.Redis.from_url(redis_srv.url)
    async with (
        serve_in_process(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Server(Operator(cfg, settings, None, url, http, app), client)
    await client.aclose()


def push_subscription() -> dict[str, Any]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {
        "endpoint": "https://push.example.test/sub/" + uuid.uuid4().hex,
        "keys": {"p256dh": b64url(point), "auth": b64url(os.urandom(16))},
    }


@dataclass
class World:
    """One case's own token (enrolled, with a pending session) and a device yet to enroll."""

    server: Server
    token_id: str
    device: Device
    session: Initiation
    newcomer: Device
    newcomer_token_id: str
    enrollment_token: str
    subscription: dict[str, Any]

    @property
    def http(self) -> httpx.AsyncClient:
        return self.server.op.http

    def valid(self, endpoint: str) -> dict[str, Any]:
        """A well-formed, correctly signed body that succeeds (fresh timestamp each call)."""
        if endpoint == INITIATE:
            return {
                "tokenId": self.token_id,
                "serviceId": "shop",
                "scopes": ["identity:name"],
                "nonce": "n-1",
            }
        if endpoint == ENROLL:
            return self.newcomer.enroll_body(
                self.enrollment_token, push_subscription=self.subscription
            )
        if endpoint == VERIFY:
            return self.device.verify_body(
                self.session.session_id, self.session.auto_password, ["identity:name"]
            )
        if endpoint == REJECT:
            return self.device.reject_body(self.session.session_id)
        return self.device.pending_body()

    def valid_bytes(self, endpoint: str) -> bytes:
        return json.dumps(self.valid(endpoint), separators=(",", ":")).encode()

    def resign(self, endpoint: str, body: dict[str, Any], mutated: str) -> dict[str, Any]:
        """Sign the message built from the (possibly mutated) fields, so that a refusal can
        only come from validation, never from a bad signature. A mutated signature is kept."""
        if mutated == "signature":
            return body
        signer = self.newcomer if endpoint == ENROLL else self.device
        try:
            if endpoint == ENROLL:
                digest = hashlib.sha256(body["enrollmentToken"].encode()).hexdigest()
                message = f"enroll|{body['deviceId']}|{body['timestamp']}|{digest}"
            elif endpoint == VERIFY:
                scopes = " ".join(body["grantedScopes"])
                message = f"{body['sessionId']}|{body['otp']}|{body['timestamp']}|{scopes}"
            elif endpoint == REJECT:
                message = f"{body['sessionId']}|reject|{body['timestamp']}"
            elif endpoint == PENDING:
                message = f"{body['tokenId']}|pending|{body['timestamp']}"
            else:
                return body
        except (KeyError, TypeError, AttributeError):
            return body
        return {**body, "signature": signer.sign(message)}

    async def snapshot(self) -> tuple[dict[bytes, bytes | None], int]:
        """Everything stored for this case's tokens, and the number of session keys."""
        r = self.server.redis
        state: dict[bytes, bytes | None] = {}
        for token in (self.token_id, self.newcomer_token_id):
            async for key in r.scan_iter(match=f"idtoken:{{t:{token}}}*", count=1000):
                state[key] = await r.dump(key)
        sessions = len(await r.keys("idtoken:*sess*"))
        return state, sessions

    async def post_json(self, endpoint: str, body: Any) -> httpx.Response:
        return await self.http.post(endpoint, json=body)

    async def post_bytes(
        self, endpoint: str, content: bytes, content_type: str | None = "application/json"
    ) -> httpx.Response:
        headers = {} if content_type is None else {"Content-Type": content_type}
        return await self.http.post(endpoint, content=content, headers=headers)

    async def follow_up(self, endpoint: str) -> None:
        """The well-formed request still succeeds: nothing was consumed or counted."""
        resp = await self.post_json(endpoint, self.valid(endpoint))
        assert resp.status_code == SUCCESS[endpoint], resp.text
        if endpoint == PENDING:
            sessions = resp.json()["sessions"]
            assert [s["sessionId"] for s in sessions] == [self.session.session_id]


_ids = itertools.count()


@pytest_asyncio.fixture(loop_scope="module")
async def world(server: Server) -> World:
    n = f"{next(_ids)}-{uuid.uuid4().hex[:8]}"
    op = server.op
    token_id = f"mal-{n}"
    device = await op.enrolled(token_id, device_id=f"dev-{n}")
    session = await op.rp().initiate(token_id, ["identity:name"])
    newcomer_token_id = f"new-{n}"
    return World(
        server=server,
        token_id=token_id,
        device=device,
        session=session,
        newcomer=op.device(f"newdev-{n}"),
        newcomer_token_id=newcomer_token_id,
        enrollment_token=op.issuer.mint(newcomer_token_id, given_name="Nova"),
        subscription=push_subscription(),
    )


# ----------------------------------------------------------------------------- assertions
def assert_error(
    resp: httpx.Response, status: int, codes: Iterable[str] | None = None
) -> dict[str, str]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text[:300]}"
    assert resp.headers["content-type"].split(";")[0] == "application/json"
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error", "error_description"}, body
    assert isinstance(body["error"], str) and isinstance(body["error_description"], str)
    assert body["error"] and body["error"].replace("_", "").isalpha()
    assert body["error"] == body["error"].lower()
    if codes is not None:
        assert body["error"] in set(codes), body
    for fragment in PYTHON_TEXT:
        assert fragment not in resp.text, resp.text
    assert len(resp.content) < 1024  # nothing echoed back in bulk
    return body


async def refused(
    world: World,
    endpoint: str,
    send: Callable[[], Awaitable[httpx.Response]],
    status: int,
    codes: Iterable[str] | None = None,
) -> dict[str, str]:
    before = await world.snapshot()
    body = assert_error(await send(), status, codes)
    assert await world.snapshot() == before, "the refused request changed the store"
    await world.follow_up(endpoint)
    return body


def inject(body: bytes, field: str, insert: bytes) -> bytes:
    """Put ``insert`` at the start of the string value of ``field`` in compact JSON."""
    marker = f'"{field}":"'.encode()
    at = body.index(marker) + len(marker)
    return body[:at] + insert + body[at:]


def replace_value(body: dict[str, Any], field: str, raw: bytes) -> bytes:
    placeholder = "__RAW_VALUE__"
    text = json.dumps({**body, field: placeholder}, separators=(",", ":")).encode()
    return text.replace(f'"{placeholder}"'.encode(), raw)


async def test_the_store_snapshot_notices_what_a_refusal_must_not_do(world: World) -> None:
    """The harness has teeth: a counted failure and a new session both change the snapshot."""
    before = await world.snapshot()
    assert any(b":device" in key for key in before[0])
    assert any(world.session.session_id.encode() in key for key in before[0])
    otp = world.session.auto_password
    wrong = f"{(int(otp) + 1) % 1_000_000:06d}"
    body = world.device.verify_body(world.session.session_id, wrong, ["identity:name"])
    assert_error(await world.post_json(VERIFY, body), 400, ["invalid_otp"])
    after_failure = await world.snapshot()
    assert after_failure != before
    assert (await world.post_json(INITIATE, world.valid(INITIATE))).status_code == 201
    after_initiate = await world.snapshot()
    assert after_initiate[1] > after_failure[1]


# ----------------------------------------------------------------------------- M01: size
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m01_one_megabyte_body_with_length_is_413(world: World, endpoint: str) -> None:
    body = {**world.valid(endpoint), "padding": "x" * 1_000_000}
    await refused(world, endpoint, lambda: world.post_json(endpoint, body), 413)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m01_one_megabyte_chunked_body_without_length_is_413(
    world: World, endpoint: str
) -> None:
    head = json.dumps(world.valid(endpoint), separators=(",", ":"))[:-1].encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield head + b',"padding":"'
        for _ in range(16):
            yield b"x" * 65_536
        yield b'"}'

    async def send() -> httpx.Response:
        resp = await world.http.post(
            endpoint, content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in resp.request.headers
        assert resp.request.headers["transfer-encoding"] == "chunked"
        return resp

    await refused(world, endpoint, send, 413)


async def raw_exchange(
    base_url: str, head: bytes, parts: Iterable[bytes], timeout: float = 5.0
) -> tuple[int, bytes]:
    """Send a request that never finishes; return the status and body the server answers."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head)
        for part in parts:
            writer.write(part)
        await writer.drain()
        async with asyncio.timeout(timeout):
            raw_head = await reader.readuntil(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m01_endless_chunked_body_is_refused_before_it_ends(
    world: World, endpoint: str
) -> None:
    head = (
        f"POST {endpoint} HTTP/1.1\r\nHost: operator.test\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"[" * 8192
    parts = [b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(10)]  # 80 KiB, no end

    async def send() -> httpx.Response:
        status, body = await raw_exchange(world.server.op.base_url, head, parts)
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    await refused(world, endpoint, send, 413)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m01_declared_huge_length_is_refused_before_the_body_arrives(
    world: World, endpoint: str
) -> None:
    head = (
        f"POST {endpoint} HTTP/1.1\r\nHost: operator.test\r\n"
        "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
    ).encode()

    async def send() -> httpx.Response:
        status, body = await raw_exchange(world.server.op.base_url, head, [b"{" + b" " * 1023])
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    await refused(world, endpoint, send, 413)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m01_limit_is_exactly_64_kib(world: World, endpoint: str) -> None:
    def padded(size: int) -> bytes:
        raw = world.valid_bytes(endpoint)
        return raw + b" " * (size - len(raw))

    before = await world.snapshot()
    assert_error(await world.post_bytes(endpoint, padded(MAX_BODY + 1)), 413)
    assert await world.snapshot() == before
    # One byte less is within the limit and is processed normally.
    resp = await world.post_bytes(endpoint, padded(MAX_BODY))
    assert resp.status_code == SUCCESS[endpoint], resp.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m06_ten_megabyte_string_is_413(world: World, endpoint: str) -> None:
    body = {**world.valid(endpoint), ID_FIELD[endpoint]: "x" * 10_000_000}
    await refused(world, endpoint, lambda: world.post_json(endpoint, body), 413)


# ----------------------------------------------------------------------------- M02: media type
MEDIA_TYPES = [
    pytest.param("text/plain", id="text-plain"),
    pytest.param("text/plain; charset=utf-8", id="text-plain-utf8"),
    pytest.param("application/x-www-form-urlencoded", id="form-urlencoded"),
    pytest.param("multipart/form-data; boundary=xyz", id="multipart"),
    pytest.param(None, id="missing"),
    pytest.param("text/json", id="text-json"),
    pytest.param("application/jsonx", id="jsonx"),
    pytest.param("application/json; charset=iso-8859-1", id="json-latin1"),
    pytest.param("application/json; charset=utf-16", id="json-utf16"),
]


@pytest.mark.parametrize("content_type", MEDIA_TYPES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m02_non_json_media_type_is_415(
    world: World, endpoint: str, content_type: str | None
) -> None:
    body = world.valid(endpoint)
    if content_type == "application/x-www-form-urlencoded":
        content = urlencode(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
        ).encode()
    else:
        content = json.dumps(body).encode()

    async def send() -> httpx.Response:
        resp = await world.post_bytes(endpoint, content, content_type)
        if content_type is None:
            assert "content-type" not in resp.request.headers
        return resp

    await refused(world, endpoint, send, 415)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m02_media_type_is_matched_case_insensitively(world: World, endpoint: str) -> None:
    resp = await world.post_bytes(
        endpoint, world.valid_bytes(endpoint), "Application/JSON; charset=UTF-8"
    )
    assert resp.status_code == SUCCESS[endpoint], resp.text


# ----------------------------------------------------------------------------- M03: bad JSON
def _m03(name: str, make: Callable[[bytes, str], bytes]) -> Any:
    return pytest.param(make, id=name)


BROKEN_JSON = [
    _m03("truncated", lambda b, f: b[:-1]),
    _m03("cut-in-half", lambda b, f: b[: len(b) // 2]),
    _m03("trailing-comma", lambda b, f: b[:-1] + b",}"),
    _m03("single-quotes", lambda b, f: b.replace(b'"', b"'")),
    _m03("unquoted-keys", lambda b, f: b.replace(f'"{f}"'.encode(), f.encode())),
    _m03("python-none", lambda b, f: b[:-1] + b',"x":None}'),
    _m03("comment", lambda b, f: b"/* hi */" + b),
    _m03("two-documents", lambda b, f: b + b),
    _m03("utf8-bom", lambda b, f: b"\xef\xbb\xbf" + b),
    _m03("utf16", lambda b, f: b.decode().encode("utf-16")),
    _m03("invalid-utf8", lambda b, f: inject(b, f, b"\xff\xfe")),
    _m03("overlong-utf8", lambda b, f: inject(b, f, b"\xc0\xaf")),
    _m03("truncated-utf8-sequence", lambda b, f: inject(b, f, b"\xe2\x82")),
    _m03("utf8-encoded-surrogate", lambda b, f: inject(b, f, b"\xed\xa0\x80")),
    _m03("raw-nul-in-string", lambda b, f: inject(b, f, b"\x00")),
    _m03("raw-control-in-string", lambda b, f: inject(b, f, b"\x01")),
    _m03("nul-after-body", lambda b, f: b + b"\x00"),
    _m03("nul-before-body", lambda b, f: b"\x00" + b),
    _m03("escaped-nul", lambda b, f: inject(b, f, b"\\u0000")),
    _m03("lone-surrogate-escape", lambda b, f: inject(b, f, b"\\ud800")),
    _m03("duplicate-member", lambda b, f: b[:-1] + f',"{f}":"other"'.encode() + b"}"),
    _m03("empty-body", lambda b, f: b""),
    _m03("whitespace-only", lambda b, f: b"  \r\n "),
]


@pytest.mark.parametrize("corrupt", BROKEN_JSON)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m03_broken_json_is_400_without_python_text(
    world: World, endpoint: str, corrupt: Callable[[bytes, str], bytes]
) -> None:
    content = corrupt(world.valid_bytes(endpoint), ID_FIELD[endpoint])
    await refused(
        world, endpoint, lambda: world.post_bytes(endpoint, content), 400, ["invalid_request"]
    )


TOP_LEVEL = [
    pytest.param(b"[]", id="empty-array"),
    pytest.param(None, id="array-of-the-valid-body"),
    pytest.param(b'"tokenId"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="true"),
]


@pytest.mark.parametrize("content", TOP_LEVEL)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_top_level_value_other_than_an_object_is_400(
    world: World, endpoint: str, content: bytes | None
) -> None:
    data = b"[" + world.valid_bytes(endpoint) + b"]" if content is None else content
    await refused(
        world, endpoint, lambda: world.post_bytes(endpoint, data), 400, ["invalid_request"]
    )


# ----------------------------------------------------------------------------- M04: nesting
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m04_hundred_thousand_brackets_are_refused_and_the_worker_survives(
    world: World, endpoint: str
) -> None:
    # 100 000 bytes is over the contract's 64 KiB limit, which applies before parsing.
    await refused(world, endpoint, lambda: world.post_bytes(endpoint, b"[" * 100_000), 413)
    assert (await world.http.get("/.well-known/jwks.json")).status_code == 200


DEEP = [
    pytest.param(lambda b, f: b"[" * 65_000, id="65000-open-brackets"),
    pytest.param(lambda b, f: b'{"a":' * 13_000, id="13000-open-objects"),
    pytest.param(lambda b, f: b"[" * 30_000 + b"]" * 30_000, id="30000-balanced"),
    pytest.param(
        lambda b, f: replace_value(json.loads(b), f, b"[" * 20_000 + b"]" * 20_000),
        id="deep-list-as-field-value",
    ),
    pytest.param(
        lambda b, f: replace_value(json.loads(b), f, b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
        id="deep-object-as-field-value",
    ),
    pytest.param(lambda b, f: b"]" * 40 + b"[" * 60 + b, id="closers-then-openers"),
]


@pytest.mark.parametrize("make", DEEP)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m04_deep_nesting_under_the_size_limit_is_400(
    world: World, endpoint: str, make: Callable[[bytes, str], bytes]
) -> None:
    content = make(world.valid_bytes(endpoint), ID_FIELD[endpoint])
    assert len(content) <= MAX_BODY
    await refused(
        world, endpoint, lambda: world.post_bytes(endpoint, content), 400, ["invalid_request"]
    )
    assert (await world.http.get("/.well-known/jwks.json")).status_code == 200


# ----------------------------------------------------------------------------- M05: numbers
NUMBERS = [
    pytest.param(b"1" + b"0" * 4999, id="5000-digit-integer"),
    pytest.param(b"-" + b"9" * 5000, id="5000-digit-negative"),
    pytest.param(b"1" + b"0" * 4999 + b".5", id="5000-digit-float"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"Infinity", id="infinity"),
    pytest.param(b"-Infinity", id="minus-infinity"),
    pytest.param(b"1e400", id="1e400"),
    pytest.param(b"-1e400", id="minus-1e400"),
    pytest.param(b"1E99999", id="1E99999"),
]


@pytest.mark.parametrize("raw", NUMBERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m05_huge_and_non_finite_numbers_are_400(
    world: World, endpoint: str, raw: bytes
) -> None:
    content = replace_value(world.valid(endpoint), NUMBER_FIELD[endpoint], raw)
    await refused(
        world, endpoint, lambda: world.post_bytes(endpoint, content), 400, ["invalid_request"]
    )


# ----------------------------------------------------------------------------- M06: types
Mutation = Callable[[Any], Any]

WRONG_TYPES: list[tuple[str, Mutation]] = [
    ("number", lambda v: 42),
    ("float", lambda v: 4.5),
    ("true", lambda v: True),
    ("false", lambda v: False),
    ("list", lambda v: [v]),
    ("object", lambda v: {"value": v}),
]
BAD_ID: list[tuple[str, Mutation]] = [
    ("empty", lambda v: ""),
    ("129-chars", lambda v: "a" * 129),
    ("space", lambda v: v + " x"),
    ("trailing-newline", lambda v: v + "\n"),
    ("leading-space", lambda v: " " + v),
    ("slash", lambda v: v + "/x"),
    ("nul", lambda v: v + "\u0000"),
    ("non-ascii", lambda v: v + "\u00fc"),
    ("fullwidth", lambda v: "\uff55\uff53\uff45\uff52"),
]
BAD_SCOPES: list[tuple[str, Mutation]] = [
    ("string", lambda v: " ".join(v)),
    ("number-item", lambda v: [42]),
    ("null-item", lambda v: [None]),
    ("bool-item", lambda v: [True]),
    ("empty-item", lambda v: [""]),
    ("upper-case", lambda v: [s.upper() for s in v]),
    ("homoglyph", lambda v: ["\u0456dentity:name"]),
    ("65-chars", lambda v: ["a" * 65]),
    ("10k-scopes", lambda v: ["x"] * 10_000),
]
# A whole number written with a fraction or an exponent is that integer (see below).
BAD_TIMESTAMP: list[tuple[str, Mutation]] = [
    ("string", lambda v: str(v)),
    ("float-fraction", lambda v: v + 0.5),
    ("seconds-as-float", lambda v: v / 1000),
]
BAD_OTP: list[tuple[str, Mutation]] = [
    ("as-integer", lambda v: int(v)),
    ("five-digits", lambda v: v[:5]),
    ("seven-digits", lambda v: v + "0"),
    ("letter", lambda v: v[:5] + "a"),
    ("arabic-indic-digits", lambda v: "\u0661\u0662\u0663\u0664\u0665\u0666"),
    ("trailing-newline", lambda v: v + "\n"),
    ("leading-space", lambda v: " " + v[:5]),
    ("empty", lambda v: ""),
]
BAD_REASON: list[tuple[str, Mutation]] = [
    ("upper-case", lambda v: v.upper()),
    ("browser-text", lambda v: "User rejected"),
    ("space", lambda v: "not me"),
    ("unknown", lambda v: "changed_my_mind"),
    ("empty", lambda v: ""),
]
BAD_PEM: list[tuple[str, Mutation]] = [
    ("not-pem", lambda v: "not a pem"),
    ("empty", lambda v: ""),
]


def _push(**changes: Any) -> Mutation:
    def mutate(v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(v))
        for key, value in changes.items():
            if key.startswith("keys."):
                if value is None:
                    del out["keys"][key[5:]]
                else:
                    out["keys"][key[5:]] = value
            elif value is None:
                del out[key]
            else:
                out[key] = value
        return out

    return mutate


BAD_PUSH: list[tuple[str, Mutation]] = [
    ("string", lambda v: v["endpoint"]),
    ("empty-object", lambda v: {}),
    ("endpoint-number", _push(endpoint=42)),
    ("endpoint-missing", _push(endpoint=None)),
    ("keys-string", _push(keys="k")),
    ("keys-missing", _push(keys=None)),
    ("p256dh-number", _push(**{"keys.p256dh": 1})),
    ("auth-missing", _push(**{"keys.auth": None})),
    ("unknown-member", _push(extra=1)),
    ("unknown-key-member", _push(**{"keys.extra": "x"})),
]

KINDS: dict[str, list[tuple[str, Mutation]]] = {
    "id": WRONG_TYPES + BAD_ID,
    "service": WRONG_TYPES,
    "scopes": WRONG_TYPES + BAD_SCOPES,
    "nonce": [*WRONG_TYPES, ("129-chars", lambda v: "n" * 129)],
    # 42 is an integer, so only the other wrong types apply (a number out of range is 401).
    "timestamp": [m for m in WRONG_TYPES if m[0] != "number"] + BAD_TIMESTAMP,
    "otp": WRONG_TYPES + BAD_OTP,
    "reason": WRONG_TYPES + BAD_REASON,
    "signature": WRONG_TYPES,
    "jws": WRONG_TYPES,
    "pem": WRONG_TYPES + BAD_PEM,
    "push": WRONG_TYPES + BAD_PUSH,
}
# Error codes accepted for a malformed field of each kind (400 in every case).
CODES = {
    "scopes": ["invalid_request", "invalid_scope"],
    "otp": ["invalid_request", "invalid_otp"],
}

FIELDS: dict[str, dict[str, str]] = {
    INITIATE: {"tokenId": "id", "serviceId": "service", "scopes": "scopes", "nonce": "nonce"},
    ENROLL: {
        "enrollmentToken": "jws",
        "publicKeyPem": "pem",
        "deviceId": "id",
        "pushSubscription": "push",
        "timestamp": "timestamp",
        "signature": "signature",
    },
    VERIFY: {
        "sessionId": "id",
        "tokenId": "id",
        "otp": "otp",
        "grantedScopes": "scopes",
        "timestamp": "timestamp",
        "credential": "jws",
        "signature": "signature",
    },
    REJECT: {
        "sessionId": "id",
        "tokenId": "id",
        "timestamp": "timestamp",
        "reason": "reason",
        "signature": "signature",
    },
    PENDING: {"tokenId": "id", "timestamp": "timestamp", "signature": "signature"},
}
OPTIONAL = {"scopes", "nonce", "pushSubscription"}

FIELD_CASES = [
    pytest.param(
        endpoint,
        field,
        mutate,
        CODES.get(kind, ["invalid_request"]),
        id=f"{endpoint}-{field}-{name}",
    )
    for endpoint, fields in FIELDS.items()
    for field, kind in fields.items()
    for name, mutate in KINDS[kind]
]


@pytest.mark.parametrize(("endpoint", "field", "mutate", "codes"), FIELD_CASES)
async def test_m06_wrong_type_or_form_of_each_field_is_400(
    world: World, endpoint: str, field: str, mutate: Mutation, codes: list[str]
) -> None:
    valid = world.valid(endpoint)
    body = world.resign(endpoint, {**valid, field: mutate(valid[field])}, field)
    await refused(world, endpoint, lambda: world.post_json(endpoint, body), 400, codes)


REQUIRED_CASES = [
    pytest.param(endpoint, field, id=f"{endpoint}-{field}")
    for endpoint, fields in FIELDS.items()
    for field in fields
    if field not in OPTIONAL
]


@pytest.mark.parametrize(("endpoint", "field"), REQUIRED_CASES)
async def test_m06_missing_required_field_is_400(world: World, endpoint: str, field: str) -> None:
    body = world.valid(endpoint)
    del body[field]
    body = world.resign(endpoint, body, field)
    await refused(
        world, endpoint, lambda: world.post_json(endpoint, body), 400, ["invalid_request"]
    )


@pytest.mark.parametrize(("endpoint", "field"), REQUIRED_CASES)
async def test_m06_null_required_field_is_400(world: World, endpoint: str, field: str) -> None:
    body = world.resign(endpoint, {**world.valid(endpoint), field: None}, field)
    await refused(
        world, endpoint, lambda: world.post_json(endpoint, body), 400, ["invalid_request"]
    )


EXTRA_FIELDS = [
    pytest.param({"extra": 1}, id="extra"),
    pytest.param({"admin": True}, id="admin-flag"),
    pytest.param({"__proto__": {"admin": True}}, id="proto"),
    pytest.param({"": ""}, id="empty-name"),
    pytest.param({"TOKENID": "user-1"}, id="case-variant"),
    pytest.param({"tokenId\u0000": "x"}, id="nul-in-name"),
    pytest.param({"x" * 5000: 1}, id="long-name"),
]


@pytest.mark.parametrize("extra", EXTRA_FIELDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_m06_unknown_field_is_400(world: World, endpoint: str, extra: dict[str, Any]) -> None:
    body = {**world.valid(endpoint), **extra}
    resp_body = await refused(
        world, endpoint, lambda: world.post_json(endpoint, body), 400, ["invalid_request"]
    )
    assert "x" * 100 not in resp_body["error_description"]


# ----------------------------------------------------------------------------- timestamps
def _with_zero_fraction(ts: int) -> bytes:
    return f"{ts}.0".encode()


def _with_exponent(ts: int) -> bytes:
    digits = str(ts)
    return f"{digits[:-3]}.{digits[-3:]}e3".encode()  # the same decimal number, exactly


@pytest.mark.parametrize("spell", [_with_zero_fraction, _with_exponent])
@pytest.mark.parametrize("endpoint", [ENROLL, VERIFY, REJECT, PENDING])
async def test_a_whole_number_timestamp_in_any_spelling_is_that_integer(
    world: World, endpoint: str, spell: Callable[[int], bytes]
) -> None:
    """JSON has one kind of number and JSON Schema calls 1700000000000.0 an integer, so the
    operator reads any spelling of a whole number as the integer; the body is signed over its
    plain decimal form, as always."""
    body = world.valid(endpoint)
    resp = await world.post_bytes(
        endpoint, replace_value(body, "timestamp", spell(body["timestamp"]))
    )
    assert resp.status_code == SUCCESS[endpoint], resp.text


async def test_a_timestamp_signed_as_spelled_with_a_fraction_does_not_verify(world: World) -> None:
    """The signed message carries the integer in plain decimal: a phone that signs
    ``...|1700000000000.0`` signed another message."""
    valid = world.valid(PENDING)
    body = world.resign(PENDING, {**valid, "timestamp": float(valid["timestamp"])}, "timestamp")
    assert_error(await world.post_json(PENDING, body), 401, ["invalid_signature"])


# ----------------------------------------------------------------------------- A07: '|'
PIPE_CASES = [
    pytest.param(INITIATE, "tokenId", lambda v: v + "|x", id="initiate-tokenId"),
    pytest.param(INITIATE, "tokenId", lambda v: "|" + v, id="initiate-tokenId-leading"),
    pytest.param(
        INITIATE, "scopes", lambda v: ["identity:name|identity:email"], id="initiate-scopes"
    ),
    pytest.param(INITIATE, "scopes", lambda v: ["|"], id="initiate-scopes-bare-pipe"),
    pytest.param(ENROLL, "deviceId", lambda v: v + "|x", id="enroll-deviceId"),
    pytest.param(ENROLL, "deviceId", lambda v: "enroll|" + v, id="enroll-deviceId-prefix"),
    pytest.param(VERIFY, "sessionId", lambda v: v + "|x", id="verify-sessionId"),
    pytest.param(VERIFY, "tokenId", lambda v: v + "|x", id="verify-tokenId"),
    pytest.param(VERIFY, "grantedScopes", lambda v: ["identity:name|x"], id="verify-scopes"),
    pytest.param(
        VERIFY, "grantedScopes", lambda v: ["identity:name", "|"], id="verify-scopes-pipe-item"
    ),
    pytest.param(VERIFY, "otp", lambda v: v[:3] + "|" + v[3:], id="verify-otp"),
    pytest.param(REJECT, "sessionId", lambda v: v + "|reject", id="reject-sessionId"),
    pytest.param(REJECT, "tokenId", lambda v: v + "|x", id="reject-tokenId"),
    pytest.param(PENDING, "tokenId", lambda v: v + "|pending", id="pending-tokenId"),
]


@pytest.mark.parametrize("signature", ["valid-over-the-message", "garbage"])
@pytest.mark.parametrize(("endpoint", "field", "mutate"), PIPE_CASES)
async def test_a07_pipe_in_a_signed_field_is_400_never_401(
    world: World, endpoint: str, field: str, mutate: Mutation, signature: str
) -> None:
    valid = world.valid(endpoint)
    body = {**valid, field: mutate(valid[field])}
    if signature == "garbage":
        if "signature" in body:
            body["signature"] = b64url(os.urandom(64))
    else:
        body = world.resign(endpoint, body, field)
    codes = ["invalid_request", "invalid_scope"] if "copes" in field else ["invalid_request"]
    await refused(world, endpoint, lambda: world.post_json(endpoint, body), 400, codes)

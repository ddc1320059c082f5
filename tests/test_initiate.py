"""POST /auth/initiate (wire contract §1) and the catalogue rows it carries.

Catalogue: S01 (session ids and wsTokens), O01 (OTP format and uniformity), O04 (client secret
compared as a whole), P01 (pending cap), X03/X04 (scopes), and "∅" for every refusal: no
session is stored, so no push can follow and no JWT can ever be issued for it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Operator, OperatorFactory
from idtoken import ids
from idtoken.app import create_app
from idtoken.client import Device, Initiation, RelyingParty, ResultError
from idtoken.clock import ManualClock
from idtoken.settings import load_settings, secret_digest
from support import (
    DEFAULT_SERVICE,
    Issuer,
    OperatorConfig,
    RedisServer,
    free_port,
    serve_in_process,
)

SESSION_ID = re.compile(r"\Asess_[A-Za-z0-9_-]{22,}\Z")
WS_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{22,}\Z")
RANDOM = re.compile(r"\A[0-9a-f]{16}\Z")
OTP = re.compile(r"\A[0-9]{6}\Z")
ISO_Z = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\Z")
B64URL_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# Text that would betray a stack trace or a library message in an error body.
PYTHON_TEXT = ("Traceback", 'File "', "Exception", "Error:", ".py", "json.", "Expecting", "redis")

CLIENT_SECRET = "s3cret-Confidential_Client-0123456789abcdef"
BANK: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "bank",
    "name": "Confidential Bank",
    "audience": "bank-audience",
    "client_secret_sha256": secret_digest(CLIENT_SECRET),
}
SHOP2: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "shop2",
    "name": "Second Shop",
    "audience": "shop2-audience",
}
SLOW: dict[str, Any] = {**DEFAULT_SERVICE, "id": "slow", "name": "Slow", "session_ttl": 300}


# One integration-server key for the module: an RSA key per test costs more than the test.
ISSUER = Issuer()


@pytest.fixture
def make_operator(make_operator: OperatorFactory) -> OperatorFactory:
    def factory(**config: Any) -> contextlib.AbstractAsyncContextManager[Operator]:
        config.setdefault("issuers", [ISSUER])
        return make_operator(**config)

    return factory


@pytest.fixture
async def operator(make_operator: OperatorFactory, redis_url: str) -> AsyncIterator[Operator]:
    async with make_operator() as op:
        yield op


# ----------------------------------------------------------------------------- helpers
def assert_error(
    resp: httpx.Response, status: int, codes: str | Iterable[str], *, never: Iterable[str] = ()
) -> dict[str, str]:
    """A contract error: exactly ``{"error", "error_description"}``, no Python text, no secret."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].split(";")[0] == "application/json"
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error", "error_description"}, body
    assert isinstance(body["error"], str) and isinstance(body["error_description"], str)
    allowed = {codes} if isinstance(codes, str) else set(codes)
    assert body["error"] in allowed, body
    for fragment in PYTHON_TEXT:
        assert fragment not in resp.text, resp.text
    for secret in never:
        assert secret not in resp.text, f"{secret!r} leaked in {resp.text}"
    return body


def session_keys(redis_srv: RedisServer) -> list[str]:
    out = redis_srv.cli("KEYS", "idtoken:*sess*")
    return out.split() if out else []


def session_hashes(redis_srv: RedisServer) -> list[str]:
    return [k for k in session_keys(redis_srv) if ":sess:" in k]


def retry_after(resp: httpx.Response) -> int:
    value = resp.headers["retry-after"]
    assert value.isdigit(), value
    seconds = int(value)
    assert seconds >= 1
    return seconds


def parse_iso_z(value: str) -> float:
    assert ISO_Z.match(value), value
    return datetime.datetime.fromisoformat(value).timestamp()


async def initiate(
    op: Operator,
    subject: str = "user-1",
    service_id: str = "shop",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"tokenId": subject, "serviceId": service_id, **extra}
    return await op.http.post("/auth/initiate", json=body, headers=headers or {})


def started(resp: httpx.Response) -> Initiation:
    assert resp.status_code == 201, resp.text
    data = resp.json()
    return Initiation(
        session_id=data["sessionId"],
        auto_password=data["autoPassword"],
        ws_token=data["wsToken"],
        expires_at=data["expiresAt"],
        random=data["random"],
    )


async def approve_and_read_jwt(
    op: Operator, device: Device, start: Initiation, granted: list[str], rp: RelyingParty
) -> dict[str, Any]:
    resp = await device.approve(start.session_id, start.auto_password, granted)
    assert resp.status_code == 200, resp.text
    message = await rp.wait_result(start, timeout=5)
    return await rp.verify_jwt(message["jwt"], session_id=start.session_id)


def chi_square(counts: Iterable[int], expected: float) -> float:
    return sum((c - expected) ** 2 / expected for c in counts)


# ----------------------------------------------------------------------------- response shape
async def test_initiate_answers_201_with_the_contract_fields(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    t0 = float(int(time.time()))
    async with make_operator(clock=ManualClock(t0)) as op:
        await op.enrolled("user-1")
        resp = await initiate(op, scopes=["identity:name"])
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"].split(";")[0] == "application/json"
        # The body carries the OTP and the wsToken: no cache may keep it.
        assert "no-store" in resp.headers.get("cache-control", "")
        data = resp.json()
        assert set(data) == {"sessionId", "autoPassword", "wsToken", "expiresAt", "random"}
        assert all(isinstance(v, str) for v in data.values())
        assert SESSION_ID.match(data["sessionId"]), data["sessionId"]
        assert len(data["sessionId"]) <= 128  # it must fit the contract's id pattern later
        assert WS_TOKEN.match(data["wsToken"]), data["wsToken"]
        assert RANDOM.match(data["random"]), data["random"]
        assert OTP.match(data["autoPassword"]), data["autoPassword"]
        assert parse_iso_z(data["expiresAt"]) == t0 + 60

        # The store holds the session, but only a digest of the wsToken.
        (key,) = session_hashes(redis_srv)
        assert data["sessionId"] in key
        stored = redis_srv.cli("HGETALL", key)
        assert data["wsToken"] not in stored


async def test_expires_at_follows_each_service_session_ttl(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    t0 = float(int(time.time()))
    async with make_operator(clock=ManualClock(t0), services=[DEFAULT_SERVICE, SLOW]) as op:
        await op.enrolled("user-1")
        short = (await initiate(op, service_id="shop")).json()
        long = (await initiate(op, service_id="slow")).json()
    assert parse_iso_z(short["expiresAt"]) == t0 + 60
    assert parse_iso_z(long["expiresAt"]) == t0 + 300


async def test_expires_at_is_about_now_plus_ttl_on_the_system_clock(operator: Operator) -> None:
    await operator.enrolled("user-1")
    before = time.time()
    data = (await initiate(operator)).json()
    after = time.time()
    expires = parse_iso_z(data["expiresAt"])
    assert before + 60 - 1.0 <= expires <= after + 60


# ----------------------------------------------------------------------------- S01, O01
def test_s01_session_ids_and_ws_tokens_are_unique_with_128_bits() -> None:
    n = 100_000
    fresh = [ids.new_session_secrets() for _ in range(n)]
    session_ids = [f.session_id for f in fresh]
    ws_tokens = [f.ws_token for f in fresh]
    assert len(set(session_ids)) == n
    assert len(set(ws_tokens)) == n
    for sid in session_ids:
        assert SESSION_ID.match(sid), sid
        assert ids.ID_PATTERN.match(sid), sid
    for token in ws_tokens:
        assert WS_TOKEN.match(token), token
    # Decoded, each carries at least 16 random bytes.
    for value in (session_ids[0].removeprefix("sess_"), ws_tokens[0]):
        assert len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) >= 16
    # The whole base64url alphabet is in use (not hex, not a narrowed alphabet).
    assert set("".join(s.removeprefix("sess_") for s in session_ids)) == B64URL_ALPHABET
    assert set("".join(ws_tokens)) == B64URL_ALPHABET


@pytest.mark.parametrize(
    "make", [ids.new_otp, lambda: ids.new_session_secrets().otp], ids=["alone", "with-session"]
)
def test_o01_otps_are_six_digits_and_uniform(make: Callable[[], str]) -> None:
    n = 100_000
    otps = [make() for _ in range(n)]
    for otp in otps:
        assert OTP.match(otp), otp
    # Per digit position: chi-square with 9 degrees of freedom. 40 is far beyond the 1e-5
    # critical value (~37.9), so a fair generator never trips it, a biased one does.
    for position in range(6):
        counts = collections.Counter(otp[position] for otp in otps)
        stat = chi_square((counts[d] for d in "0123456789"), n / 10)
        assert stat < 40, (position, stat, counts)
    # The whole value, in 100 buckets (99 degrees of freedom, 1e-9 critical value ~ 190).
    buckets = collections.Counter(int(otp) // 10_000 for otp in otps)
    stat = chi_square((buckets[b] for b in range(100)), n / 100)
    assert stat < 200, stat


def test_o01_session_secrets_come_from_the_secrets_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """O01 "from `secrets`": every byte of a session's id, wsToken, random and code is read
    through `secrets` (the operating system's CSPRNG), never `random`."""
    reads: list[int] = []
    real = secrets.token_bytes

    def spy(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", spy)
    made = ids.new_session_secrets()
    assert reads == [52]  # 16 (id) + 24 (wsToken) + 8 (random) + 4 (code)
    monkeypatch.setattr(secrets, "token_bytes", lambda n: b"\x00" * n)
    fixed = ids.new_session_secrets()
    assert (fixed.session_id, fixed.ws_token, fixed.random, fixed.otp) == (
        "sess_" + "A" * 22,
        "A" * 32,
        "0" * 16,
        "000000",
    )
    assert made.session_id != fixed.session_id


def test_random_is_16_lowercase_hex_characters() -> None:
    values = [ids.new_session_secrets().random for _ in range(10_000)]
    assert all(RANDOM.match(v) for v in values)
    assert len(set(values)) == len(values)


async def test_hundreds_of_real_initiates_give_six_digit_codes_and_unique_ids(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    limits = {"max_pending_per_token": 100, "pushes_per_token_per_10min": 1000}
    async with make_operator(limits=limits) as op:
        tokens = [f"user-{i}" for i in range(3)]
        for token in tokens:
            await op.enrolled(token)
        results: list[dict[str, str]] = []
        for token in tokens:
            for _ in range(100):
                resp = await initiate(op, token)
                assert resp.status_code == 201, resp.text
                results.append(resp.json())
            # The configured cap still holds at 100.
            assert_error(await initiate(op, token), 429, "too_many_requests")
    assert len(results) == 300
    assert all(OTP.match(r["autoPassword"]) for r in results)
    assert len({r["sessionId"] for r in results}) == 300
    assert len({r["wsToken"] for r in results}) == 300
    assert len({r["random"] for r in results}) == 300
    # Birthday bound: ~0.045 expected OTP collisions among 300 codes.
    assert len({r["autoPassword"] for r in results}) >= 295


# ----------------------------------------------------------------------------- scopes
@pytest.mark.parametrize("scopes", [None, []], ids=["omitted", "empty"])
async def test_default_scopes_apply_when_scopes_are_omitted_or_empty(
    operator: Operator, scopes: list[str] | None
) -> None:
    device = await operator.enrolled("user-1", given_name="Marie", family_name="Dupont")
    extra: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
    start = started(await initiate(operator, nonce="n-default", **extra))
    (pending,) = await device.pending()
    assert pending["sessionId"] == start.session_id
    assert pending["scopes"] == ["identity:name"]
    claims = await approve_and_read_jwt(operator, device, start, ["identity:name"], operator.rp())
    assert claims["scope"] == "identity:name"
    assert claims["idtoken"] == {"tokenId": "user-1", "givenName": "Marie", "familyName": "Dupont"}


SCOPE_REFUSALS = [
    pytest.param(["identity:unknown"], ("invalid_scope",), id="unknown"),
    pytest.param(["admin"], ("invalid_scope",), id="admin"),
    pytest.param(["openid"], ("invalid_scope",), id="openid"),
    pytest.param(["identity:phone"], ("invalid_scope",), id="known-but-not-allowed"),
    pytest.param(["identity:name", "admin"], ("invalid_scope",), id="one-bad-among-good"),
    pytest.param(["*"], ("invalid_scope",), id="star"),
    pytest.param(["identity:*"], ("invalid_scope",), id="wildcard"),
    pytest.param(["IDENTITY:NAME"], ("invalid_scope", "invalid_request"), id="upper-case"),
    pytest.param(["Identity:name"], ("invalid_scope", "invalid_request"), id="capitalised"),
    # Cyrillic i (U+0456) and a zero-width space: must never alias identity:name.
    pytest.param(["\u0456dentity:name"], ("invalid_scope", "invalid_request"), id="homoglyph"),
    pytest.param(["identity:name\u200b"], ("invalid_scope", "invalid_request"), id="zero-width"),
    pytest.param(["identity:name "], ("invalid_scope", "invalid_request"), id="trailing-space"),
    pytest.param([""], ("invalid_scope", "invalid_request"), id="empty-string"),
    pytest.param(["x"] * 10_000, ("invalid_scope", "invalid_request"), id="10k-scopes"),
    pytest.param(
        ["identity:name identity:age_over_18"],
        ("invalid_scope", "invalid_request"),
        id="space-joined-in-list",
    ),
    pytest.param("identity:name", ("invalid_scope", "invalid_request"), id="string-not-list"),
    pytest.param(
        "identity:name identity:age_over_18",
        ("invalid_scope", "invalid_request"),
        id="oauth-style-string",
    ),
    pytest.param({"identity:name": True}, ("invalid_scope", "invalid_request"), id="object"),
    pytest.param([["identity:name"]], ("invalid_scope", "invalid_request"), id="nested-list"),
    pytest.param([42], ("invalid_scope", "invalid_request"), id="number-item"),
    pytest.param([None], ("invalid_scope", "invalid_request"), id="null-item"),
    pytest.param(["a" * 65], ("invalid_scope", "invalid_request"), id="65-chars"),
]


@pytest.mark.parametrize(("scopes", "codes"), SCOPE_REFUSALS)
async def test_x03_x04_refused_scopes_store_nothing(
    operator: Operator, redis_srv: RedisServer, scopes: Any, codes: tuple[str, ...]
) -> None:
    device = await operator.enrolled("user-1")
    resp = await initiate(operator, scopes=scopes)
    assert_error(resp, 400, codes)
    assert session_keys(redis_srv) == []
    assert await device.pending() == []


@pytest.mark.parametrize(
    "scopes",
    [
        ["identity:name", "identity:name"],
        ["identity:age_over_18", "identity:name", "identity:age_over_18", "identity:name"],
    ],
    ids=["twice", "interleaved"],
)
async def test_x04_duplicate_scopes_are_canonicalised(
    operator: Operator, scopes: list[str]
) -> None:
    device = await operator.enrolled("user-1", given_name="Marie", birthdate="1990-05-01")
    start = started(await initiate(operator, scopes=scopes))
    (pending,) = await device.pending()
    assert sorted(pending["scopes"]) == sorted(set(scopes))
    granted = list(dict.fromkeys(scopes))
    claims = await approve_and_read_jwt(operator, device, start, granted, operator.rp())
    assert sorted(claims["scope"].split(" ")) == sorted(set(scopes))


# ----------------------------------------------------------------------------- client auth
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty-header"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer wrong-secret", id="wrong-secret"),
        pytest.param("Bearer " + CLIENT_SECRET[:-1], id="o04-correct-prefix"),
        pytest.param("Bearer " + CLIENT_SECRET[:8], id="o04-short-prefix"),
        pytest.param("Bearer " + CLIENT_SECRET + "x", id="o04-secret-plus-suffix"),
        pytest.param("Bearer " + CLIENT_SECRET.upper(), id="case-changed-secret"),
        pytest.param("Bearer " + secret_digest(CLIENT_SECRET), id="pass-the-hash"),
        pytest.param(CLIENT_SECRET, id="no-scheme"),
        pytest.param("Token " + CLIENT_SECRET, id="wrong-scheme"),
        pytest.param(
            "Basic " + base64.b64encode(f"bank:{CLIENT_SECRET}".encode()).decode(),
            id="basic-scheme",
        ),
    ],
)
async def test_confidential_service_refuses_bad_client_authentication(
    make_operator: OperatorFactory,
    redis_url: str,
    redis_srv: RedisServer,
    authorization: str | None,
) -> None:
    async with make_operator(services=[DEFAULT_SERVICE, BANK]) as op:
        await op.enrolled("user-1")
        headers = {} if authorization is None else {"Authorization": authorization}
        resp = await initiate(op, service_id="bank", headers=headers)
        assert_error(
            resp, 401, "invalid_client", never=[CLIENT_SECRET, BANK["client_secret_sha256"]]
        )
        challenge = resp.headers.get("www-authenticate", "")
        assert challenge.lower().startswith("bearer"), challenge
        assert CLIENT_SECRET not in challenge
        assert session_keys(redis_srv) == []


async def test_client_authentication_comes_before_token_lookup_and_pending_cap(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    """An unauthenticated caller learns nothing: not whether a token exists, not its cap."""
    good = {"Authorization": f"Bearer {CLIENT_SECRET}"}
    bad = {"Authorization": "Bearer not-the-secret"}
    async with make_operator(services=[DEFAULT_SERVICE, BANK]) as op:
        await op.enrolled("user-1")
        assert_error(await initiate(op, "ghost", "bank", headers=bad), 401, "invalid_client")
        assert_error(await initiate(op, "ghost", "bank"), 401, "invalid_client")
        assert_error(await initiate(op, "ghost", "bank", headers=good), 404, "unknown_token")
        for _ in range(3):
            started(await initiate(op, service_id="bank", headers=good))
        assert_error(await initiate(op, service_id="bank", headers=good), 429, "too_many_requests")
        assert_error(await initiate(op, service_id="bank", headers=bad), 401, "invalid_client")
        assert len(session_hashes(redis_srv)) == 3


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_confidential_service_accepts_the_right_bearer_secret(
    make_operator: OperatorFactory, redis_url: str, scheme: str
) -> None:
    async with make_operator(services=[DEFAULT_SERVICE, BANK]) as op:
        device = await op.enrolled("user-1")
        resp = await initiate(
            op, service_id="bank", headers={"Authorization": f"{scheme} {CLIENT_SECRET}"}
        )
        start = started(resp)
        (pending,) = await device.pending()
        assert pending["serviceId"] == "bank"
        # The reference client does the same with its configured secret.
        rp = op.rp("bank", client_secret=CLIENT_SECRET)
        claims = await approve_and_read_jwt(op, device, start, ["identity:name"], rp)
        assert claims["aud"] == "bank-audience"


async def test_public_service_accepts_the_seed_call_without_authorization(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[DEFAULT_SERVICE, BANK]) as op:
        await op.enrolled("user-1")
        resp = await op.http.post(
            "/auth/initiate",
            json={"tokenId": "user-1", "serviceId": "shop", "scopes": ["identity:name"]},
        )
        start = started(resp)
        assert SESSION_ID.match(start.session_id)


# ----------------------------------------------------------------------------- 404s, 403
@pytest.mark.parametrize("service_id", ["nope", "SHOP", "shop2", "shop."])
async def test_unknown_service_is_404_and_stores_nothing(
    operator: Operator, redis_srv: RedisServer, service_id: str
) -> None:
    await operator.enrolled("user-1")
    assert_error(await initiate(operator, service_id=service_id), 404, "unknown_service")
    assert session_keys(redis_srv) == []


@pytest.mark.parametrize("token_id", ["ghost", "USER-1", "user-1.", "user-10"])
async def test_unknown_token_is_404_and_stores_nothing(
    operator: Operator, redis_srv: RedisServer, token_id: str
) -> None:
    await operator.enrolled("user-1")
    assert_error(await initiate(operator, token_id), 404, "unknown_token")
    assert session_keys(redis_srv) == []


async def test_token_id_length_boundary(operator: Operator, redis_srv: RedisServer) -> None:
    # 128 characters is a well-formed id (so: unknown token); 129 is malformed.
    assert_error(await initiate(operator, "a" * 128), 404, "unknown_token")
    assert_error(await initiate(operator, "a" * 129), 400, "invalid_request")
    assert_error(await initiate(operator, ""), 400, "invalid_request")
    assert session_keys(redis_srv) == []


async def test_revoked_token_is_403_and_stores_nothing(
    operator: Operator, redis_srv: RedisServer
) -> None:
    device = await operator.enrolled("user-1")
    config = Path(operator.config.directory) / "operator.toml"
    done = subprocess.run(
        [sys.executable, "-m", "idtoken", "tokens", "revoke", "user-1", "--config", str(config)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert_error(await initiate(operator), 403, "token_revoked")
    assert session_hashes(redis_srv) == []
    assert device.enrollment is not None


# ----------------------------------------------------------------------------- nonce
@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("n", id="1-char"),
        pytest.param("N0nce-._~" * 14 + "xx", id="128-ascii"),
        pytest.param("\u00e9" * 128, id="128-non-ascii"),
    ],
)
async def test_nonce_up_to_128_chars_is_copied_into_the_jwt(operator: Operator, nonce: str) -> None:
    assert len(nonce) <= 128
    device = await operator.enrolled("user-1")
    start = started(await initiate(operator, scopes=["identity:name"], nonce=nonce))
    rp = operator.rp()
    resp = await device.approve(start.session_id, start.auto_password, ["identity:name"])
    assert resp.status_code == 200, resp.text
    message = await rp.wait_result(start, timeout=5)
    claims = await rp.verify_jwt(message["jwt"], session_id=start.session_id, nonce=nonce)
    assert claims["nonce"] == nonce


async def test_no_nonce_means_no_nonce_claim(operator: Operator) -> None:
    device = await operator.enrolled("user-1")
    start = started(await initiate(operator))
    claims = await approve_and_read_jwt(operator, device, start, ["identity:name"], operator.rp())
    assert "nonce" not in claims


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("n" * 129, id="129-chars"),
        pytest.param("\u00e9" * 129, id="129-non-ascii"),
        pytest.param("n" * 10_000, id="10k-chars"),
        pytest.param(42, id="number"),
        pytest.param(["n"], id="list"),
        pytest.param({"n": 1}, id="object"),
        pytest.param(True, id="bool"),
    ],
)
async def test_bad_nonce_is_400_and_stores_nothing(
    operator: Operator, redis_srv: RedisServer, nonce: Any
) -> None:
    await operator.enrolled("user-1")
    assert_error(await initiate(operator, nonce=nonce), 400, "invalid_request")
    assert session_keys(redis_srv) == []


# ----------------------------------------------------------------------------- P01
@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_p01_fourth_pending_session_is_429_with_retry_after(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer, store: str
) -> None:
    async with make_operator(store=store) as op:
        device = await op.enrolled("user-1")
        responses = [await initiate(op) for _ in range(20)]
        created = [started(r) for r in responses[:3]]
        otps = [s.auto_password for s in created]
        ws_tokens = [s.ws_token for s in created]
        for resp in responses[3:]:
            assert_error(resp, 429, "too_many_requests", never=otps + ws_tokens)
            assert 1 <= retry_after(resp) <= 61
        pending = await device.pending()
        assert {p["sessionId"] for p in pending} == {s.session_id for s in created}
        if store == "redis":
            assert len(session_hashes(redis_srv)) == 3
        else:
            assert redis_srv.cli("KEYS", "idtoken:*") == ""

        # A decision frees a slot: the next initiate is accepted again.
        resp = await device.reject(created[0].session_id)
        assert resp.status_code == 200, resp.text
        started(await initiate(op))
        assert_error(await initiate(op), 429, "too_many_requests")


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_p01_concurrent_initiates_create_exactly_the_cap(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer, store: str
) -> None:
    async with make_operator(store=store, services=[DEFAULT_SERVICE, SHOP2]) as op:
        device = await op.enrolled("user-1")
        responses = await asyncio.gather(
            *(initiate(op, service_id=("shop", "shop2")[i % 2]) for i in range(20))
        )
        codes = collections.Counter(r.status_code for r in responses)
        assert codes == {201: 3, 429: 17}
        for resp in responses:
            if resp.status_code == 429:
                assert_error(resp, 429, "too_many_requests")
                retry_after(resp)
        assert len(await device.pending()) == 3
        if store == "redis":
            assert len(session_hashes(redis_srv)) == 3


async def test_p01_pending_cap_is_per_token_across_services(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator(services=[DEFAULT_SERVICE, SHOP2]) as op:
        device = await op.enrolled("user-1")
        other = await op.enrolled("user-2", device_id="device-2")
        statuses = []
        for i in range(20):
            resp = await initiate(op, service_id="shop" if i % 2 == 0 else "shop2")
            statuses.append(resp.status_code)
            if resp.status_code != 201:
                assert_error(resp, 429, "too_many_requests")
                retry_after(resp)
        assert statuses == [201] * 3 + [429] * 17
        pending = await device.pending()
        assert sorted(p["serviceId"] for p in pending) == ["shop", "shop", "shop2"]
        assert len(session_hashes(redis_srv)) == 3
        # Another token is not affected by user-1's cap.
        started(await initiate(op, "user-2", service_id="shop2"))
        assert len(await other.pending()) == 1


# ----------------------------------------------------------------------------- 503
async def test_store_down_is_503_with_retry_after_and_well_known_still_served(
    tmp_path: Path,
) -> None:
    cfg = OperatorConfig(
        tmp_path / "x", redis_url=f"redis://127.0.0.1:{free_port()}/0", issuers=[ISSUER]
    )
    settings = load_settings(cfg.write())
    app = create_app(settings)
    began = time.monotonic()
    async with (
        serve_in_process(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        assert time.monotonic() - began < 10  # the lifespan does not hang on a dead store
        t0 = time.monotonic()
        resp = await http.post(
            "/auth/initiate",
            json={"tokenId": "user-1", "serviceId": "shop", "scopes": ["identity:name"]},
        )
        assert time.monotonic() - t0 < 5
        assert_error(resp, 503, "temporarily_unavailable")
        retry_after(resp)
        # Public metadata does not depend on the store.
        jwks = await http.get("/.well-known/jwks.json")
        assert jwks.status_code == 200
        assert jwks.json()["keys"]
        disco = await http.get("/.well-known/openid-configuration")
        assert disco.status_code == 200
        # Validation still comes first: a malformed request is 400, not 503.
        bad = await http.post("/auth/initiate", json={"tokenId": "a|b", "serviceId": "shop"})
        assert_error(bad, 400, "invalid_request")
        # The phone's endpoints answer the same way while the store is down.
        phone = Device(http, device_id="device-1")
        ts = int(time.time() * 1000)
        sid = "sess_" + "A" * 22
        otp = "123456"
        mobile = {
            "/auth/pending": {
                "tokenId": "user-1",
                "timestamp": ts,
                "signature": phone.sign(f"user-1|pending|{ts}"),
            },
            "/auth/reject": {
                "sessionId": sid,
                "tokenId": "user-1",
                "timestamp": ts,
                "reason": "user_rejected",
                "signature": phone.sign(f"{sid}|reject|{ts}"),
            },
            "/auth/verify": {
                "sessionId": sid,
                "tokenId": "user-1",
                "otp": otp,
                "grantedScopes": ["identity:name"],
                "timestamp": ts,
                "credential": "e30.e30.c2ln",
                "signature": phone.sign(f"{sid}|{otp}|{ts}|identity:name"),
            },
            "/enroll": phone.enroll_body(cfg.issuers[0].mint("user-1")),
        }
        for path, body in mobile.items():
            t0 = time.monotonic()
            resp = await http.post(path, json=body)
            assert time.monotonic() - t0 < 5, path
            assert_error(resp, 503, "temporarily_unavailable", never=[otp])
            retry_after(resp)


# ----------------------------------------------------------------------------- embedded store
async def test_embedded_store_passes_the_happy_path(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator(store="memory") as op:
        device = await op.enrolled("user-1", given_name="Marie", family_name="Dupont")
        rp = op.rp()
        start = await rp.initiate("user-1", ["identity:name"], nonce="n-mem")
        assert OTP.match(start.auto_password) and SESSION_ID.match(start.session_id)
        resp = await device.approve(start.session_id, start.auto_password, ["identity:name"])
        assert resp.status_code == 200, resp.text
        message = await rp.wait_result(start, timeout=5)
        claims = await rp.verify_jwt(message["jwt"], session_id=start.session_id, nonce="n-mem")
        assert claims["sub"] == "user-1"
        assert claims["aud"] == "shop-audience"
        assert claims["scope"] == "identity:name"
        assert claims["idtoken"] == {
            "tokenId": "user-1",
            "givenName": "Marie",
            "familyName": "Dupont",
        }
        # A second approval of the same session yields no second JWT.
        again = await device.approve(start.session_id, start.auto_password, ["identity:name"])
        assert_error(again, 409, "session_not_pending")
    # The embedded store never touched Redis.
    assert redis_srv.cli("KEYS", "idtoken:*") == ""


async def test_embedded_store_refuses_unknown_token_and_bad_scope(
    make_operator: OperatorFactory,
) -> None:
    async with make_operator(store="memory") as op:
        device = await op.enrolled("user-1")
        assert_error(await initiate(op, "ghost"), 404, "unknown_token")
        assert_error(await initiate(op, scopes=["admin"]), 400, "invalid_scope")
        assert await device.pending() == []


# ----------------------------------------------------------------------------- error bodies
async def test_error_bodies_never_carry_otp_ws_token_or_client_secret(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[DEFAULT_SERVICE, BANK]) as op:
        device = await op.enrolled("user-1")
        start = started(await initiate(op))
        otp, ws_token = start.auto_password, start.ws_token
        wrong_otp = f"{(int(otp) + 1) % 1_000_000:06d}"
        never = [otp, wrong_otp, ws_token, CLIENT_SECRET, BANK["client_secret_sha256"]]
        bearer = {"Authorization": "Bearer " + CLIENT_SECRET + "x"}
        checks: list[tuple[httpx.Response, int, tuple[str, ...]]] = [
            (await initiate(op, service_id="bank", headers=bearer), 401, ("invalid_client",)),
            (
                await initiate(
                    op, service_id="bank", headers={"Authorization": CLIENT_SECRET[:-1]}
                ),
                401,
                ("invalid_client",),
            ),
            (await initiate(op, ws_token), 404, ("unknown_token",)),
            (await initiate(op, service_id=CLIENT_SECRET), 404, ("unknown_service",)),
            (await initiate(op, ws_token + "|x"), 400, ("invalid_request",)),
            (await initiate(op, nonce=ws_token * 5), 400, ("invalid_request",)),
            (await initiate(op, scopes=[otp]), 400, ("invalid_scope", "invalid_request")),
            (await initiate(op, scopes=[ws_token]), 400, ("invalid_scope", "invalid_request")),
            (await initiate(op, extra_field=ws_token), 400, ("invalid_request",)),
        ]
        # Fill the cap so that the 429 is produced while three OTPs are live.
        more = [started(await initiate(op)) for _ in range(2)]
        never += [s.auto_password for s in more] + [s.ws_token for s in more]
        checks.append((await initiate(op), 429, ("too_many_requests",)))
        # The phone's side: a code for an unknown session, then a wrong code (which, in
        # display mode, ends the session at once).
        unknown = await device.approve("sess_" + "A" * 22, otp, ["identity:name"])
        checks.append((unknown, 404, ("unknown_session",)))
        wrong = await device.approve(start.session_id, wrong_otp, ["identity:name"])
        checks.append((wrong, 400, ("invalid_otp",)))
        for resp, status, codes in checks:
            assert_error(resp, status, codes, never=never)
        with pytest.raises(ResultError) as info:
            await op.rp().wait_result(start, timeout=5)
        assert (info.value.kind, info.value.detail) == ("rejected", "Invalid OTP")

"""KYC enrollment (seeds 002/003) against a real loopback JWKS server.

Catalogue rows: K02 (JWKS endpoint down or slow), K03 (unusable keys ignored), K04 (redirects,
huge bodies, drip), K05 (no kid, wrong alg), J06 (jku/x5u never fetched), J08 (odd kids), plus
the claim mapping and trust levels of contract §5. The provider is an aiohttp server on
127.0.0.1 that counts its requests, so tests see exactly when the operator fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import Operator, OperatorFactory
from idtoken.app import create_app
from idtoken.clock import ManualClock
from idtoken.enrollment.jwks import RemoteJwks
from idtoken.enrollment.kyc import uqudo_claims
from idtoken.errors import ConfigError, InvalidEnrollmentToken, TemporarilyUnavailable
from idtoken.jose import JoseError
from idtoken.settings import load_settings
from idtoken.store.memory import MemoryStore
from support import OperatorConfig, b64url, free_port, sign_jws

KYC_ISSUER = "https://id.uqudo.io"
KYC_AUDIENCE = "clientid"
JWKS_PATH = "/api/.well-known/jwks.json"
FUTURE_EXPIRY = "301231"  # 2030-12-31

# Seed 002, "Enrollment payload example", verbatim.
SEED_ENROLLMENT_PAYLOAD: dict[str, Any] = {
    "aud": "clientid",
    "data": {
        "documents": [
            {
                "face": {
                    "auditTrailImageId": "5f290764076cff0e3f7b3a2f",
                    "matchLevel": 2,
                    "match": True,
                },
                "documentType": "PASSPORT",
                "scan": {
                    "faceImageId": "5e9960242d35cc7ca0328729",
                    "frontImageId": "5e9960232d35cc7ca0328725",
                    "back": {},
                    "front": {
                        "documentCode": "P<",
                        "dateOfExpiry": "220315",
                        "secondaryId": "MARIO",
                        "nationality": "ITA",
                        "documentNumber": "YAXXXXXX",
                        "mrzVerified": True,
                        "sex": "M",
                        "dateOfBirth": "800825",
                        "opt1": "<<<<<<<<<<<<<<",
                        "primaryId": "CASOLA",
                        "mrzText": "P<ITACASOLA<<MARIO<<<<<<<<<<<<<<<<<<<<<<<<<<\n"
                        "YAXXXXXX52ITA8008253M2203159<<<<<<<<<<<<<<00",
                        "issuer": "ITA",
                    },
                    "backImageId": None,
                },
                "reading": {
                    "data": {
                        "mrz": {
                            "documentCode": "P",
                            "dateOfExpiry": "220315",
                            "optionalData2": None,
                            "gender": "MALE",
                            "nationality": "ITA",
                            "documentNumber": "YAXXXXXX",
                            "dateOfBirth": "800825",
                            "issuingState": "ITA",
                            "secondaryIdentifier": "MARIO",
                            "primaryIdentifier": "CASOLA",
                            "optionalData1": "<<<<<<<<<<<<<<0",
                        },
                        "countrySigningCertificate": {
                            "serialNumber": "1",
                            "publicKeyAlgorithm": "RSA",
                            "subject": "C=IT,O=MINISTERO DELL'INTERNO,OU=PE,"
                            "CN=CERTIFICATION AUTHORITY 01",
                            "certificateThumbprint": "9cb8d31734faa68009d1f7fef68a5cc802cb8a2e",
                            "validFrom": "2011-12-14T10:29:04.000+0000",
                            "signatureAlgorithm": "SHA1WITHRSA",
                            "issuer": "C=IT,O=MINISTERO DELL'INTERNO,OU=PE,"
                            "CN=CERTIFICATION AUTHORITY 01",
                            "validTo": "2027-03-10T10:29:04.000+0000",
                        },
                        "ldsVersion": None,
                        "documentSigningCertificate": {
                            "serialNumber": "464",
                            "publicKeyAlgorithm": "RSA",
                            "subject": "C=IT,O=MINISTERO DELL'INTERNO,OU=PE,CN=DOCUMENT SIGNER.24",
                            "certificateThumbprint": "3f0b7bac9adde63916a2c4ebd0e3f38c916a3a97",
                            "validFrom": "2012-03-14T11:02:41.000+0000",
                            "signatureAlgorithm": "SHA1WITHRSA",
                            "issuer": "C=IT,O=MINISTERO DELL'INTERNO,OU=PE,"
                            "CN=CERTIFICATION AUTHORITY 01",
                            "validTo": "2022-06-15T11:02:41.000+0000",
                        },
                        "photo": "",
                        "dataGroupHashes": [
                            {
                                "computedHash": "86525f4741b3504765f4100f2ddf9bf1f17380ef",
                                "dataGroupNumber": 1,
                                "storedHash": "86525f4741b3504765f4100f2ddf9bf1f17380ef",
                                "match": True,
                            },
                            {
                                "computedHash": "b01c95fc9d381f6a7f5fd9f3fae767ea0d9fd2a0",
                                "dataGroupNumber": 2,
                                "storedHash": "b01c95fc9d381f6a7f5fd9f3fae767ea0d9fd2a0",
                                "match": True,
                            },
                        ],
                        "photoMimeType": "image/jp2",
                        "validity": {
                            "dataGroupHashesSucceeded": True,
                            "documentSignerSucceeded": True,
                            "countrySignerSucceeded": True,
                            "sodSignerSucceeded": True,
                        },
                    }
                },
            }
        ],
        "nonce": "",
    },
    "iss": "https://id.uqudo.io",
    "exp": 1587111760,
    "iat": 1587109960,
    "jti": "5a5cb56b-ef3d-434c-9f86-5ab24c4953ec",
}

# Seed 002, "Face Session payload example", verbatim.
SEED_FACE_SESSION_PAYLOAD: dict[str, Any] = {
    "aud": "client_id",
    "data": {
        "face": {"auditTrailImageId": "5eabf184827ca836b8e28cf0", "matchLevel": 5, "match": True},
        "sessionId": "962cd61a-87b2-4c53-b415-27c053c9b281",
    },
    "iss": "https://id.uqudo.io",
    "exp": 1588327388,
    "iat": 1588326788,
    "jti": "6049f9c6-756e-48d7-b1ca-bbd00fef7d14",
}


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """A test RSA key, generated once per name and size for the whole run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **members: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "e": b64url(e), "kid": kid, "alg": "RS256", "n": b64url(n), **members}


def enrollment_payload(*, lifetime: int = 300, now: float | None = None) -> dict[str, Any]:
    """Seed 002's enrollment payload made current: fresh iat/exp/jti, a future expiry date."""
    payload = copy.deepcopy(SEED_ENROLLMENT_PAYLOAD)
    t = int(time.time() if now is None else now)
    payload.update(iss=KYC_ISSUER, aud=KYC_AUDIENCE, iat=t, exp=t + lifetime)
    payload["jti"] = b64url(os.urandom(12))
    document = payload["data"]["documents"][0]
    document["scan"]["front"]["dateOfExpiry"] = FUTURE_EXPIRY
    document["reading"]["data"]["mrz"]["dateOfExpiry"] = FUTURE_EXPIRY
    return payload


def document(payload: dict[str, Any]) -> dict[str, Any]:
    """The (first) document of an enrollment payload, for tests to edit."""
    doc: dict[str, Any] = payload["data"]["documents"][0]
    return doc


def kyc_token(
    payload: dict[str, Any],
    key: rsa.RSAPrivateKey | Any,
    kid: Any = "kyc-1",
    **header: Any,
) -> str:
    hdr: dict[str, Any] = {"kid": kid, "alg": "RS256", **header}
    if kid is None:
        del hdr["kid"]
    return sign_jws(hdr, payload, key)


class JwksServer:
    """A JWKS endpoint on 127.0.0.1. ``mode`` picks its behaviour for the next requests:

    ``ok`` (serve ``keys``), ``stall`` (never answer), ``drip`` (1 byte per second),
    ``big`` (5 MB with Content-Length), ``big_chunked`` (5 MB without), ``redirect``
    (302 to ``redirect_to``), ``error`` (500). ``/old`` always redirects to the JWKS path.
    """

    def __init__(self) -> None:
        self.keys: list[Any] = []  # JWKs, or deliberately anything else
        self.mode = "ok"
        self.redirect_to = ""
        self.requests = 0
        self.port = free_port()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + JWKS_PATH

    async def start(self) -> JwksServer:
        app = web.Application()
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_get("/old", self._old)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        return self

    async def stop(self) -> None:
        """Stop listening (the port is refused afterwards) and end stalled handlers."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _old(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": JWKS_PATH})

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "ok":
            return web.json_response({"keys": self.keys})
        if self.mode == "error":
            return web.Response(status=500)
        if self.mode == "redirect":
            return web.Response(status=302, headers={"Location": self.redirect_to})
        if self.mode == "big":
            return web.Response(body=b" " * (5 * 1024 * 1024), content_type="application/json")
        if self.mode == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
            return web.Response(status=500)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk, count, pause = (
            (b" " * 65536, 80, 0.0) if self.mode == "big_chunked" else (b" ", 60, 1.0)
        )
        try:
            for _ in range(count):
                await response.write(chunk)
                if pause:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release.wait(), pause)
                    if self._release.is_set():
                        break
        except (ConnectionError, RuntimeError):
            pass  # the operator hung up, as it should
        return response


# ----------------------------------------------------------------------------- fixtures
IDENTITY = (
    "givenName",
    "familyName",
    "dateOfBirth",
    "nationality",
    "documentNumber",
    "documentType",
    "documentExpiry",
)
SEED_IDENTITY = {
    "givenName": "MARIO",
    "familyName": "CASOLA",
    "dateOfBirth": "1980-08-25",
    "nationality": "ITA",
    "documentNumber": "YAXXXXXX",
    "documentType": "PASSPORT",
    "documentExpiry": "2030-12-31",
}


@dataclass
class Kyc:
    """The provider's JWKS server and operators configured to trust it."""

    server: JwksServer
    make_operator: OperatorFactory

    @contextlib.asynccontextmanager
    async def operator(
        self,
        *,
        cooldown: int = 30,
        jwks_uri: str | None = None,
        trust_level: int | None = None,
        **config: Any,
    ) -> AsyncIterator[Operator]:
        extra = (
            "\n[[enrollment_issuers]]\n"
            f'issuer = "{KYC_ISSUER}"\n'
            f'audience = "{KYC_AUDIENCE}"\n'
            'format = "uqudo"\n'
            f'jwks_uri = "{jwks_uri or self.server.url}"\n'
        )
        if trust_level is not None:
            extra += f"trust_level = {trust_level}\n"
        extra += f"\n[enrollment]\njwks_cooldown = {cooldown}\n"
        async with self.make_operator(
            limits={"enroll_per_ip_per_hour": 10000}, extra=extra, **config
        ) as op:
            yield op


@pytest.fixture
async def kyc(make_operator: OperatorFactory, redis_url: str) -> AsyncIterator[Kyc]:
    # redis_url flushes Redis: no shared JWKS copy or fetch cooldown survives another test.
    server = await JwksServer().start()
    server.keys = [rsa_jwk(rsa_key("a"), "kyc-1")]
    try:
        yield Kyc(server, make_operator)
    finally:
        await server.stop()


async def enroll(op: Operator, token: str, device_id: str = "phone-1") -> httpx.Response:
    return await op.http.post("/enroll", json=op.device(device_id).enroll_body(token))


def seed_token(kid: str = "kyc-1", key: str = "a", **header: Any) -> str:
    return kyc_token(enrollment_payload(), rsa_key(key), kid, **header)


async def credential_claims(op: Operator, credential: str) -> dict[str, Any]:
    """The credential's payload, verified with the operator's published JWKS."""
    jwks = (await op.http.get("/.well-known/jwks.json")).json()
    token = jwt.decode(credential, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert token.header["typ"] == "idtoken-credential+jwt"
    return dict(token.claims)


class RefusalLog(logging.Handler):
    """Collects the logged reason (``detail``) of every refused request."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.details: list[str | None] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "request refused":
            self.details.append(getattr(record, "detail", None))

    def last(self) -> str | None:
        return self.details[-1] if self.details else None


@pytest.fixture
def refusals() -> Iterator[RefusalLog]:
    handler = RefusalLog()
    logger = logging.getLogger("idtoken.http")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_refused(resp: httpx.Response, label: object = "") -> None:
    assert resp.status_code == 401, (label, resp.status_code, resp.text)
    assert resp.json()["error"] == "invalid_enrollment_token", label


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "temporarily_unavailable"
    assert int(resp.headers["retry-after"]) >= 1


# ----------------------------------------------------------------------------- claims and levels
async def test_seed_enrollment_maps_claims_at_trust_level_3_and_logs_in(kyc: Kyc) -> None:
    async with kyc.operator() as op:
        device = op.device()
        enrolled = await device.enroll(seed_token())
        # No `sub` in a KYC result: the operator assigns a fresh random tokenId.
        assert enrolled.token_id.startswith("tok_") and len(enrolled.token_id) > 20
        claims = await credential_claims(op, enrolled.credential)
        assert {k: claims[k] for k in IDENTITY} == SEED_IDENTITY
        assert claims["trustLevel"] == 3
        assert claims["src"] == KYC_ISSUER and claims["sub"] == enrolled.token_id
        end_of_document = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC).timestamp()
        assert claims["exp"] < end_of_document
        assert kyc.server.requests == 1

        rp = op.rp()
        requested = ["identity:full", "identity:name", "identity:trust_level"]
        started = await rp.initiate(enrolled.token_id, requested)
        granted = ["identity:name", "identity:trust_level"]
        resp = await device.approve(started.session_id, started.auto_password, granted)
        assert resp.status_code == 200, resp.text
        message = await rp.wait_result(started, timeout=5)
        token = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
        assert token["scope"] == "identity:name identity:trust_level"
        assert token["idtoken"] == {
            "tokenId": enrolled.token_id,
            "givenName": "MARIO",
            "familyName": "CASOLA",
            "trustLevel": 3,
        }

        started = await rp.initiate(enrolled.token_id, requested)
        resp = await device.approve(started.session_id, started.auto_password, ["identity:full"])
        assert resp.status_code == 200, resp.text
        message = await rp.wait_result(started, timeout=5)
        token = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
        assert token["idtoken"] == {"tokenId": enrolled.token_id, **SEED_IDENTITY, "trustLevel": 3}
        assert kyc.server.requests == 1


async def test_trust_level_2_from_verified_scan_and_chip_data_wins(kyc: Kyc) -> None:
    async with kyc.operator() as op:
        # Scan only (no chip read), MRZ verified, face matched: level 2 from the scan.
        payload = enrollment_payload()
        del document(payload)["reading"]
        resp = await enroll(op, kyc_token(payload, rsa_key("a")))
        assert resp.status_code == 201, resp.text
        claims = await credential_claims(op, resp.json()["credential"])
        assert claims["trustLevel"] == 2
        assert {k: claims[k] for k in IDENTITY} == SEED_IDENTITY

        # Chip and scan disagree; the chip passed passive authentication, so it wins.
        payload = enrollment_payload()
        chip = document(payload)["reading"]["data"]["mrz"]
        front = document(payload)["scan"]["front"]
        chip.update(documentNumber="CHIP0001", secondaryIdentifier="MARIO<LUIGI")
        chip.update(dateOfBirth="800826", nationality="D<<", dateOfExpiry="291130")
        front.update(documentNumber="SCAN0001", secondaryId="MARCO", dateOfExpiry="301231")
        resp = await enroll(op, kyc_token(payload, rsa_key("a")), "phone-2")
        assert resp.status_code == 201, resp.text
        claims = await credential_claims(op, resp.json()["credential"])
        assert claims["trustLevel"] == 3
        assert claims["documentNumber"] == "CHIP0001"
        assert claims["givenName"] == "MARIO LUIGI"
        assert claims["dateOfBirth"] == "1980-08-26"
        assert claims["nationality"] == "DEU"
        assert claims["documentExpiry"] == "2029-11-30"

        # A chip that failed passive authentication is not believed: level 2, scan data.
        payload = enrollment_payload()
        document(payload)["reading"]["data"]["validity"]["countrySignerSucceeded"] = False
        document(payload)["reading"]["data"]["mrz"]["documentNumber"] = "CHIP0001"
        document(payload)["scan"]["front"]["documentNumber"] = "SCAN0001"
        resp = await enroll(op, kyc_token(payload, rsa_key("a")), "phone-3")
        assert resp.status_code == 201, resp.text
        claims = await credential_claims(op, resp.json()["credential"])
        assert (claims["trustLevel"], claims["documentNumber"]) == (2, "SCAN0001")


def _edit(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    payload = enrollment_payload()
    change(payload)
    return payload


def _face_session() -> dict[str, Any]:
    payload = copy.deepcopy(SEED_FACE_SESSION_PAYLOAD)
    t = int(time.time())
    # Made current and addressed to us, so that only its shape can be the reason to refuse.
    payload.update(aud=KYC_AUDIENCE, iat=t, exp=t + 300, jti=b64url(os.urandom(12)))
    return payload


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        target = document(payload)
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value

    return change


def _without_chip_and(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def both(payload: dict[str, Any]) -> None:
        del document(payload)["reading"]
        change(payload)

    return both


def _expired(payload: dict[str, Any]) -> None:
    document(payload)["scan"]["front"]["dateOfExpiry"] = "200101"
    document(payload)["reading"]["data"]["mrz"]["dateOfExpiry"] = "200101"


# label -> (payload, the reason the operator logs)
REFUSED_PAYLOADS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "face session payload": (_face_session, "kyc_face_session_cannot_enroll"),
    "face.match false": (lambda: _edit(_set(("face", "match"), False)), "kyc_no_face_match"),
    "face missing": (lambda: _edit(lambda p: document(p).pop("face")), "kyc_no_face_match"),
    "face.match 'true' (a string)": (
        lambda: _edit(_set(("face", "match"), "true")),
        "kyc_no_face_match",
    ),
    "mrzVerified false, no chip": (
        lambda: _edit(_without_chip_and(_set(("scan", "front", "mrzVerified"), False))),
        "kyc_document_not_verified",
    ),
    "chip check false and mrzVerified false": (
        lambda: _edit(
            lambda p: (
                _set(("reading", "data", "validity", "sodSignerSucceeded"), False)(p),
                _set(("scan", "front", "mrzVerified"), False)(p),
            )
        ),
        "kyc_document_not_verified",
    ),
    "document expired": (lambda: _edit(_expired), "document_expired"),
    "no documents": (
        lambda: _edit(lambda p: p["data"].update(documents=[])),
        "kyc_no_documents",
    ),
    "malformed date of birth": (
        lambda: _edit(
            lambda p: (
                _set(("reading", "data", "mrz", "dateOfBirth"), "80<<<<")(p),
                _set(("scan", "front", "dateOfBirth"), "80<<<<")(p),
            )
        ),
        "kyc_bad_dateOfBirth",
    ),
}


async def test_insufficient_or_wrong_evidence_is_refused(kyc: Kyc, refusals: RefusalLog) -> None:
    async with kyc.operator() as op:
        for i, (label, (build, reason)) in enumerate(REFUSED_PAYLOADS.items()):
            resp = await enroll(op, kyc_token(build(), rsa_key("a")), f"phone-{i}")
            assert_refused(resp, label)
            assert refusals.last() == reason, label


async def test_configured_trust_level_3_refuses_a_scan_only_enrollment(kyc: Kyc) -> None:
    async with kyc.operator(trust_level=3) as op:
        payload = enrollment_payload()
        del document(payload)["reading"]
        assert_refused(await enroll(op, kyc_token(payload, rsa_key("a"))))
        resp = await enroll(op, seed_token(), "phone-2")
        assert resp.status_code == 201, resp.text


async def test_token_claims_are_checked(kyc: Kyc, refusals: RefusalLog) -> None:
    async with kyc.operator() as op:
        now = int(time.time())
        cases: dict[str, dict[str, Any]] = {
            "wrong_aud": {"aud": "client_id"},
            "expired": {"iat": now - 400, "exp": now - 100},
            "lifetime_too_long": {"iat": now, "exp": now + 3600},
            "not_yet_valid": {"nbf": now + 600},
            "issued_in_future": {"iat": now + 600, "exp": now + 700},
        }
        for i, (reason, changes) in enumerate(cases.items()):
            payload = {**enrollment_payload(), **changes}
            assert_refused(await enroll(op, kyc_token(payload, rsa_key("a")), f"p-{i}"), reason)
            assert refusals.last() == reason
        for i, claim in enumerate(("exp", "jti", "aud")):
            payload = enrollment_payload()
            del payload[claim]
            assert_refused(await enroll(op, kyc_token(payload, rsa_key("a")), f"q-{i}"), claim)
            assert refusals.last() == f"missing_{claim}"
        # Signed by another key under the provider's kid.
        assert_refused(await enroll(op, seed_token(key="b"), "r-1"), "bad signature")
        assert refusals.last() == "bad_signature"
        # Single use: the same result cannot enroll a second device.
        token = seed_token()
        assert (await enroll(op, token, "s-1")).status_code == 201
        replay = await enroll(op, token, "s-2")
        assert replay.status_code == 409 and replay.json()["error"] == "token_replayed"


def test_two_digit_years_and_icao_codes() -> None:
    today = datetime.date(2026, 3, 1)

    def mapped(**chip: str) -> tuple[dict[str, Any], int, datetime.date]:
        payload = enrollment_payload()
        document(payload)["reading"]["data"]["mrz"].update(chip)
        return uqudo_claims(payload, today=today)

    births = {
        "800825": "1980-08-25",
        "000229": "2000-02-29",
        "250101": "2025-01-01",
        "260301": "2026-03-01",
        "260302": "1926-03-02",  # would be in the future as 2026
        "270101": "1927-01-01",  # after the current two-digit year
        "991231": "1999-12-31",
    }
    for raw, iso in births.items():
        assert mapped(dateOfBirth=raw)[0]["dateOfBirth"] == iso, raw
    claims, level, expiry = mapped(dateOfExpiry="260301", nationality="D<<")
    assert (claims["nationality"], level, expiry) == ("DEU", 3, datetime.date(2026, 3, 1))
    with pytest.raises(InvalidEnrollmentToken):
        mapped(dateOfExpiry="260228")  # expired yesterday
    with pytest.raises(InvalidEnrollmentToken):
        mapped(dateOfBirth="801345")


# ----------------------------------------------------------------------------- the key set
async def test_key_rotation_is_picked_up_with_one_fetch(kyc: Kyc) -> None:
    async with kyc.operator(cooldown=1) as op:
        assert (await enroll(op, seed_token())).status_code == 201
        assert kyc.server.requests == 1
        kyc.server.keys = [rsa_jwk(rsa_key("a"), "kyc-1"), rsa_jwk(rsa_key("b"), "kyc-2")]
        await asyncio.sleep(1.1)  # past the cooldown of the first fetch
        assert (await enroll(op, seed_token("kyc-2", "b"), "p-2")).status_code == 201
        assert kyc.server.requests == 2
        assert (await enroll(op, seed_token("kyc-2", "b"), "p-3")).status_code == 201
        assert (await enroll(op, seed_token("kyc-1", "a"), "p-4")).status_code == 201
        assert kyc.server.requests == 2

        # The provider withdraws kyc-1: after the next fetch it no longer verifies.
        kyc.server.keys = [rsa_jwk(rsa_key("b"), "kyc-2"), rsa_jwk(rsa_key("c"), "kyc-3")]
        await asyncio.sleep(1.1)
        assert (await enroll(op, seed_token("kyc-3", "c"), "p-5")).status_code == 201
        assert kyc.server.requests == 3
        assert_refused(await enroll(op, seed_token("kyc-1", "a"), "p-6"))
        assert kyc.server.requests == 3


async def test_a_flood_of_unknown_and_odd_kids_costs_one_fetch(
    kyc: Kyc, refusals: RefusalLog
) -> None:
    odd_kids: list[Any] = [
        "../../../../etc/passwd",
        "' OR '1'='1' --",
        "k" * 10240,
        "a\x00b",
        "",
        5,
        ["kyc-1"],
        {"kid": "kyc-1"},
        "kyc-1 ",
        "KYC-1",
        "https://attacker.example/jwks.json",
    ]
    async with kyc.operator() as op:
        started = time.monotonic()
        # A small payload, so that the 10 KB kid still fits the 16 KiB token limit.
        small = {"iss": KYC_ISSUER, "aud": KYC_AUDIENCE, "exp": int(time.time()) + 60}
        for i, kid in enumerate(odd_kids):
            token = sign_jws({"alg": "RS256", "kid": kid}, {**small, "jti": str(i)}, rsa_key("a"))
            assert_refused(await enroll(op, token, f"odd-{i}"), repr(kid)[:40])
            assert refusals.last() in ("bad_kid", "unknown_kid"), repr(kid)[:40]
        for i in range(50):
            assert_refused(await enroll(op, seed_token(f"unknown-{i}"), f"u-{i}"), i)
            assert refusals.last() == "unknown_kid"
        assert kyc.server.requests == 1
        assert time.monotonic() - started < 20
        # The one fetch brought the real key, which verifies from memory.
        assert (await enroll(op, seed_token(), "good")).status_code == 201
        assert kyc.server.requests == 1


async def test_endpoint_down_known_kid_verifies_unknown_kid_is_503(kyc: Kyc) -> None:
    async with kyc.operator(cooldown=1) as op:
        assert (await enroll(op, seed_token(), "p-1")).status_code == 201
        await kyc.server.stop()
        assert (await enroll(op, seed_token(), "p-2")).status_code == 201
        await asyncio.sleep(1.1)
        started = time.monotonic()
        assert_unavailable(await enroll(op, seed_token("kyc-new", "b"), "p-3"))
        assert time.monotonic() - started < 3
        assert (await enroll(op, seed_token(), "p-4")).status_code == 201
        # Within the cooldown of the failed attempt: 503 again, without trying.
        assert_unavailable(await enroll(op, seed_token("kyc-new", "b"), "p-5"))


async def test_endpoint_stalled_unknown_kid_is_503_within_the_timeout(kyc: Kyc) -> None:
    async with kyc.operator(cooldown=1) as op:
        assert (await enroll(op, seed_token(), "p-1")).status_code == 201
        kyc.server.mode = "stall"
        await asyncio.sleep(1.1)
        started = time.monotonic()
        assert_unavailable(await enroll(op, seed_token("kyc-new", "b"), "p-2"))
        assert 1.5 < time.monotonic() - started < 3
        started = time.monotonic()
        assert (await enroll(op, seed_token(), "p-3")).status_code == 201
        assert time.monotonic() - started < 1
        assert kyc.server.requests == 2


async def test_unusable_keys_are_ignored(kyc: Kyc, refusals: RefusalLog) -> None:
    a, b, c = rsa_key("a"), rsa_key("b"), rsa_key("c")
    small = rsa_key("small", 1024)
    kyc.server.keys = [
        {"kty": "oct", "kid": "k-oct", "k": b64url(b"0" * 32), "alg": "HS256"},
        rsa_jwk(b, "k-enc", use="enc"),
        rsa_jwk(small, "k-1024"),
        rsa_jwk(b, "k-dup"),
        rsa_jwk(c, "k-dup"),
        rsa_jwk(b, "k-ops", key_ops=["encrypt", "wrapKey"]),
        rsa_jwk(b, "k-rs384", alg="RS384"),
        rsa_jwk(a, "kyc-1"),
        rsa_jwk(b, "k-verify", key_ops=["verify"], use="sig"),
        {"kty": "EC", "kid": "k-ec", "crv": "P-256", "x": "AA", "y": "AA"},
        "not a key",
    ]
    refused = [
        ("k-oct", "a"),
        ("k-enc", "b"),
        ("k-1024", "small"),
        ("k-dup", "b"),
        ("k-dup", "c"),
        ("k-ops", "b"),
        ("k-rs384", "b"),
        ("k-ec", "a"),
    ]
    async with kyc.operator() as op:
        for i, (kid, key) in enumerate(refused):
            key_obj = small if key == "small" else rsa_key(key)
            token = kyc_token(enrollment_payload(), key_obj, kid)
            assert_refused(await enroll(op, token, f"p-{i}"), kid)
            assert refusals.last() == "unknown_kid", kid
        assert (await enroll(op, seed_token("kyc-1", "a"), "ok-1")).status_code == 201
        assert (await enroll(op, seed_token("k-verify", "b"), "ok-2")).status_code == 201
        assert kyc.server.requests == 1


async def test_redirects_only_within_the_same_origin(kyc: Kyc) -> None:
    other = await JwksServer().start()
    other.keys = kyc.server.keys
    try:
        # Same origin (/old -> /api/.well-known/jwks.json): followed.
        async with kyc.operator(jwks_uri=kyc.server.origin + "/old") as op:
            assert (await enroll(op, seed_token())).status_code == 201
            assert kyc.server.requests == 1
        kyc.server.mode = "redirect"
        targets = [
            other.url,  # another port
            f"http://localhost:{kyc.server.port}{JWKS_PATH}",  # another host name
            "https://127.0.0.1:1/x",  # another scheme
        ]
        for i, target in enumerate(targets):
            kyc.server.redirect_to = target
            before = kyc.server.requests
            # A distinct URL per case: each has its own cache and cooldown.
            async with kyc.operator(jwks_uri=f"{kyc.server.url}?case={i}") as op:
                assert_unavailable(await enroll(op, seed_token()))
            assert kyc.server.requests == before + 1, target
        assert other.requests == 0
        # A redirect loop on the same origin stops after three redirects.
        kyc.server.redirect_to = JWKS_PATH
        before = kyc.server.requests
        async with kyc.operator(jwks_uri=f"{kyc.server.url}?case=loop") as op:
            assert_unavailable(await enroll(op, seed_token()))
        assert kyc.server.requests == before + 4
    finally:
        await other.stop()


async def test_huge_and_dripping_bodies_are_cut_off(kyc: Kyc) -> None:
    for mode, limit in (("big", 1.5), ("big_chunked", 1.5), ("drip", 3.0)):
        kyc.server.mode = mode
        async with kyc.operator(jwks_uri=f"{kyc.server.url}?mode={mode}") as op:
            started = time.monotonic()
            assert_unavailable(await enroll(op, seed_token()))
            assert time.monotonic() - started < limit, mode


async def test_header_checks_come_before_any_fetch(kyc: Kyc, refusals: RefusalLog) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    attacker = await JwksServer().start()
    attacker.keys = [rsa_jwk(rsa_key("b"), "kyc-1")]
    payload = enrollment_payload
    not_rs256 = "kyc_alg_not_rs256"
    tokens = {
        "no kid": (kyc_token(payload(), rsa_key("a"), kid=None), "kyc_missing_kid"),
        "alg RS384": (
            sign_jws({"alg": "RS384", "kid": "kyc-1"}, payload(), rsa_key("a")),
            not_rs256,
        ),
        "alg PS256": (
            sign_jws({"alg": "PS256", "kid": "kyc-1"}, payload(), rsa_key("a")),
            not_rs256,
        ),
        "alg HS256": (
            sign_jws({"alg": "HS256", "kid": "kyc-1"}, payload(), rsa_key("a")),
            not_rs256,
        ),
        "alg none": (sign_jws({"alg": "none", "kid": "kyc-1"}, payload(), rsa_key("a")), not_rs256),
        "alg ES256": (sign_jws({"alg": "ES256", "kid": "kyc-1"}, payload(), ec_key), not_rs256),
        "jku": (kyc_token(payload(), rsa_key("b"), jku=attacker.url), "header_member_not_allowed"),
        "x5u": (kyc_token(payload(), rsa_key("b"), x5u=attacker.url), "header_member_not_allowed"),
        "typ JOSE+JSON": (kyc_token(payload(), rsa_key("a"), typ="JOSE+JSON"), "wrong_typ"),
    }
    try:
        async with kyc.operator() as op:
            for i, (label, (token, reason)) in enumerate(tokens.items()):
                assert_refused(await enroll(op, token, f"p-{i}"), label)
                assert refusals.last() == reason, label
        assert kyc.server.requests == 0
        assert attacker.requests == 0
    finally:
        await attacker.stop()


async def test_instances_share_the_fetched_keys_and_the_cooldown(kyc: Kyc) -> None:
    async with kyc.operator() as first, kyc.operator() as second:
        assert (await enroll(first, seed_token(), "p-1")).status_code == 201
        assert kyc.server.requests == 1
        assert (await enroll(second, seed_token(), "p-2")).status_code == 201
        assert_refused(await enroll(second, seed_token("unknown"), "p-3"))
        assert kyc.server.requests == 1

    # The provider fails: the instance that tried says 503, and so does the other, untried.
    kyc.server.mode = "error"
    uri = f"{kyc.server.url}?down=1"
    async with kyc.operator(jwks_uri=uri) as first, kyc.operator(jwks_uri=uri) as second:
        assert_unavailable(await enroll(first, seed_token(), "p-4"))
        started = time.monotonic()
        assert_unavailable(await enroll(second, seed_token(), "p-5"))
        assert time.monotonic() - started < 1
    assert kyc.server.requests == 2


async def test_cooldown_follows_the_injected_clock(kyc: Kyc) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    jwks = RemoteJwks(kyc.server.url, store=store, clock=clock, cooldown=30, timeout=2.0)
    sibling = RemoteJwks(kyc.server.url, store=store, clock=clock, cooldown=30, timeout=2.0)
    try:
        await jwks.verifier("kyc-1")
        assert kyc.server.requests == 1
        with pytest.raises(JoseError, match="unknown_kid"):
            await jwks.verifier("nope")
        clock.advance(29)
        with pytest.raises(JoseError, match="unknown_kid"):
            await jwks.verifier("nope")
        assert kyc.server.requests == 1
        # Another instance on the same store takes the shared copy instead of fetching.
        await sibling.verifier("kyc-1")
        assert kyc.server.requests == 1
        clock.advance(2)
        with pytest.raises(JoseError, match="unknown_kid"):
            await jwks.verifier("nope")
        assert kyc.server.requests == 2
        kyc.server.mode = "error"
        clock.advance(31)
        with pytest.raises(TemporarilyUnavailable):
            await jwks.verifier("nope")
        assert kyc.server.requests == 3
        clock.advance(10)
        with pytest.raises(TemporarilyUnavailable) as info:
            await jwks.verifier("still-nope")
        assert info.value.retry_after == 20
        assert kyc.server.requests == 3
        await jwks.verifier("kyc-1")  # known keys keep working
        assert jwks.kids == frozenset({"kyc-1"})
    finally:
        await jwks.aclose()
        await sibling.aclose()


async def test_kyc_issuer_needs_a_jwks_uri(tmp_path: Any) -> None:
    cfg = OperatorConfig(
        tmp_path / "op",
        extra=(
            "\n[[enrollment_issuers]]\n"
            f'issuer = "{KYC_ISSUER}"\n'
            f'audience = "{KYC_AUDIENCE}"\n'
            'format = "uqudo"\n'
            'public_key_file = "issuer0.pem"\n'
        ),
    )
    with pytest.raises(ConfigError) as info:
        create_app(load_settings(cfg.write()))
    assert info.value.key == "enrollment_issuers[1].jwks_uri"
    assert KYC_ISSUER in str(info.value)

"""POST /enroll with integration-server JWTs (seed 000), through HTTP on a real uvicorn and Redis.

Covers the 201 shape and credential, "no identity claims at rest", and the catalogue rows J01,
J03, J06-J08, J10-J14, J20-J22 and E01, E03-E06, E08. Every refused enrollment token gets one
opaque 401 body and leaves nothing behind in Redis (catalogue "∅").
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from joserfc import jws
from joserfc.jwk import JWKRegistry, KeySet

from conftest import Operator, OperatorFactory
from idtoken.client import Device, ResultError
from support import ENROLL_AUDIENCE, ISSUER_URL, Issuer, RedisServer, b64url

EC_ISSUER_URL = "https://ec-integration.test"
OTHER_ISSUER_URL = "https://other-integration.test"
LIMITS = {"enroll_per_ip_per_hour": 10000}
CREDENTIAL_TYP = "idtoken-credential+jwt"
ISO_Z = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
# Words that would betray a library message, a reason code or a stack trace in a body.
LEAKY = re.compile(
    r"traceback|exception|cryptography|joserfc|jose|openssl|padding|pkcs|[a-z]+_[a-z]+|"
    r"\bkid\b|\balg\b|\bexp\b|\baud\b|\biss\b|\bjti\b",
    re.IGNORECASE,
)

Sign = Callable[[bytes], bytes]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def op(make_operator: OperatorFactory, redis_url: str) -> AsyncIterator[Operator]:
    """Three integration issuers: RSA (the default), EC P-256, and a second RSA one."""
    issuers = [
        Issuer(),
        Issuer(issuer=EC_ISSUER_URL, kind="EC"),
        Issuer(issuer=OTHER_ISSUER_URL),
    ]
    async with make_operator(issuers=issuers, limits=LIMITS) as operator:
        yield operator


def rsa_issuer(op: Operator) -> Issuer:
    return op.config.issuers[0]


def ec_issuer(op: Operator) -> Issuer:
    return op.config.issuers[1]


def other_issuer(op: Operator) -> Issuer:
    return op.config.issuers[2]


# --------------------------------------------------------------------------- token helpers


def claims_for(issuer: str = ISSUER_URL, sub: str = "user-1", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "iss": issuer,
        "aud": ENROLL_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": b64url(os.urandom(12)),
    }
    claims.update(extra)
    return claims


def to_bytes(value: dict[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def make_token(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sign: Sign) -> str:
    """A compact JWS with any header/payload bytes and any signing function."""
    signing_input = f"{b64url(to_bytes(header))}.{b64url(to_bytes(payload))}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def es_raw(key: ec.EllipticCurvePrivateKey, hash_alg: hashes.HashAlgorithm | None = None) -> Sign:
    size = (key.curve.key_size + 7) // 8

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg or hashes.SHA256())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return sign


def rs(key: rsa.RSAPrivateKey, hash_alg: hashes.HashAlgorithm | None = None) -> Sign:
    return lambda data: key.sign(data, padding.PKCS1v15(), hash_alg or hashes.SHA256())


def ps256(key: rsa.RSAPrivateKey) -> Sign:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return lambda data: key.sign(data, pss, hashes.SHA256())


def hs256(secret: bytes) -> Sign:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def legit_sign(issuer: Issuer) -> Sign:
    key = issuer.private_key
    return rs(key) if isinstance(key, rsa.RSAPrivateKey) else es_raw(key)


# --------------------------------------------------------------------------- device helpers

_device_counter = iter(range(1_000_000))


def new_device(op: Operator) -> Device:
    return Device(op.http, device_id=f"device-{next(_device_counter)}")


def device_jwk(device: Device) -> dict[str, str]:
    numbers = device.private_key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


async def post_enroll(op: Operator, token: str, device: Device | None = None) -> httpx.Response:
    device = device or new_device(op)
    return await op.http.post("/enroll", json=device.enroll_body(token))


# --------------------------------------------------------------------------- redis helpers


def stored_keys(srv: RedisServer) -> set[str]:
    """Every operator key except the rate-limit windows (counters are allowed to move) and
    the operator secret's fingerprint, which every instance records when it starts."""
    out = srv.cli("KEYS", "idtoken:*")
    return {
        k for k in out.splitlines() if k and not k.startswith(("idtoken:rate:", "idtoken:secret:"))
    }


def token_keys(srv: RedisServer, sub: str) -> list[str]:
    return [k for k in srv.cli("KEYS", f"idtoken:{{t:{sub}}}*").splitlines() if k]


def dump_redis(srv: RedisServer) -> str:
    """Every key and every value in Redis, as text."""
    parts = []
    for key in srv.cli("KEYS", "*").splitlines():
        if not key:
            continue
        kind = srv.cli("TYPE", key)
        if kind == "hash":
            value = srv.cli("HGETALL", key)
        elif kind == "string":
            value = srv.cli("GET", key)
        elif kind == "zset":
            value = srv.cli("ZRANGE", key, "0", "-1", "WITHSCORES")
        elif kind == "set":
            value = srv.cli("SMEMBERS", key)
        elif kind == "list":
            value = srv.cli("LRANGE", key, "0", "-1")
        else:
            value = srv.cli("DUMP", key)
        parts.append(f"{key} ({kind}):\n{value}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- assertions


async def reference_401(op: Operator) -> dict[str, Any]:
    """The body for a token signed by a stranger's key: what every token failure must match."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = make_token({"alg": "RS256", "typ": "JWT"}, claims_for(sub="ref-user"), rs(stranger))
    resp = await post_enroll(op, token)
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_enrollment_token"
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert not LEAKY.search(body["error_description"]), body
    return dict(body)


async def assert_refused(
    op: Operator, srv: RedisServer, token: str, reference: dict[str, Any], *, label: str = ""
) -> None:
    """401 invalid_enrollment_token, the opaque reference body, and nothing stored."""
    before = stored_keys(srv)
    resp = await post_enroll(op, token)
    assert resp.status_code == 401, f"{label}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == reference, label
    assert stored_keys(srv) == before, f"{label}: something was stored"


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def verified_credential(op: Operator, credential: str) -> tuple[dict[str, Any], Any]:
    """Verify the credential with the operator's published JWKS, independently of our code."""
    jwks = (await op.http.get("/.well-known/jwks.json")).json()
    obj = jws.deserialize_compact(credential, KeySet.import_key_set(jwks), algorithms=["ES256"])
    return dict(obj.headers()), json.loads(obj.payload)


# =========================================================================== 201 and storage


async def test_enroll_201_shape_and_credential(op: Operator, redis_srv: RedisServer) -> None:
    device = new_device(op)
    token = rsa_issuer(op).mint(
        "alice-01",
        given_name="Marie",
        family_name="Dupont",
        birthdate="1990-05-01",
        nationality="FRA",
        email="marie@example.test",
        phone_number="+33123456789",
        role="admin",  # not an identity claim we map: must not reach the credential
    )
    resp = await post_enroll(op, token, device)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"enrolled", "tokenId", "deviceId", "expiresAt", "credential"}
    assert body["enrolled"] is True
    assert body["tokenId"] == "alice-01"
    assert body["deviceId"] == device.device_id
    assert ISO_Z.match(body["expiresAt"]), body["expiresAt"]

    header, payload = await verified_credential(op, body["credential"])
    assert header["typ"] == CREDENTIAL_TYP
    assert header["alg"] == "ES256"
    assert payload["sub"] == "alice-01"
    assert payload["iss"] == op.settings.issuer
    assert payload["cnf"] == {"jwk": device_jwk(device)}
    assert payload["trustLevel"] == 1
    assert payload["givenName"] == "Marie"
    assert payload["familyName"] == "Dupont"
    assert payload["dateOfBirth"] == "1990-05-01"
    assert payload["nationality"] == "FRA"
    assert payload["email"] == "marie@example.test"
    assert payload["phoneNumber"] == "+33123456789"
    for source_name in ("given_name", "family_name", "birthdate", "phone_number", "role", "name"):
        assert source_name not in payload
    assert "admin" not in json.dumps(payload)
    expires = datetime.datetime.fromtimestamp(payload["exp"], tz=datetime.UTC)
    assert body["expiresAt"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert payload["exp"] > time.time() + 86400

    assert "idtoken:{t:alice-01}:device" in stored_keys(redis_srv)


async def test_full_name_is_split_on_its_last_space(op: Operator) -> None:
    resp = await post_enroll(op, rsa_issuer(op).mint("bob-01", name="Marie Anne Dupont"))
    assert resp.status_code == 201, resp.text
    _, payload = await verified_credential(op, resp.json()["credential"])
    assert payload["givenName"] == "Marie Anne"
    assert payload["familyName"] == "Dupont"
    assert "name" not in payload


async def test_ec_issuer_with_es256_enrolls(op: Operator) -> None:
    resp = await post_enroll(op, ec_issuer(op).mint("ec-user-01", given_name="Eve"))
    assert resp.status_code == 201, resp.text
    _, payload = await verified_credential(op, resp.json()["credential"])
    assert payload["sub"] == "ec-user-01" and payload["givenName"] == "Eve"


async def test_operator_keeps_no_identity_claims_at_rest(
    op: Operator, redis_srv: RedisServer
) -> None:
    device = new_device(op)
    token = rsa_issuer(op).mint(
        "carol-01",
        given_name="Zyxwvu",
        family_name="Qwmnbvkjh",
        birthdate="1977-07-17",
        email="zyxwvu@example.test",
        phone_number="+41799990011",
        nationality="CHE",
    )
    enrollment = await device.enroll(token)
    # A login as well: sessions must not copy identity claims into Redis either.
    rp = op.rp()
    started = await rp.initiate("carol-01", ["identity:name", "identity:date_of_birth"])
    approved = await device.approve(
        started.session_id, started.auto_password, ["identity:name", "identity:date_of_birth"]
    )
    assert approved.status_code == 200, approved.text
    message = await rp.wait_result(started, timeout=5)
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["idtoken"]["givenName"] == "Zyxwvu"  # the claim did travel, via the phone

    dump = dump_redis(redis_srv)
    assert "idtoken:{t:carol-01}:device" in dump
    for secret in ("Zyxwvu", "Qwmnbvkjh", "1977-07-17", "zyxwvu@", "+41799990011", "CHE"):
        assert secret not in dump, f"{secret!r} stored at rest:\n{dump}"
    # The credential itself is not stored either (only its jti).
    assert enrollment.credential not in dump


# =========================================================================== J01


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_j01_alg_none_is_refused(op: Operator, redis_srv: RedisServer, alg: str) -> None:
    reference = await reference_401(op)
    claims = claims_for(sub="none-user")
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    unsigned = f"{header}.{b64url(json.dumps(claims).encode())}"
    await assert_refused(op, redis_srv, unsigned + ".", reference, label="empty signature")
    # The same with some signature bytes, and with the real issuer's signature over it.
    await assert_refused(op, redis_srv, unsigned + ".AAAA", reference, label="junk signature")
    signed = make_token({"alg": alg, "typ": "JWT"}, claims, legit_sign(rsa_issuer(op)))
    await assert_refused(op, redis_srv, signed, reference, label="issuer-signed none")
    assert token_keys(redis_srv, "none-user") == []


# =========================================================================== J03


async def test_j03_algorithm_is_pinned_per_issuer_key(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    rsa_iss, ec_iss = rsa_issuer(op), ec_issuer(op)
    attacker_ec = ec.generate_private_key(ec.SECP256R1())
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases: list[tuple[str, str, Issuer, Sign]] = [
        # Header algorithm of the other family, signed by a key of that family.
        ("ES256 on the RSA issuer", "ES256", rsa_iss, es_raw(attacker_ec)),
        ("RS256 on the EC issuer", "RS256", ec_iss, rs(attacker_rsa)),
        # Other algorithms, signed with the issuer's real key where the key allows it.
        ("PS256 by the RSA issuer key", "PS256", rsa_iss, ps256(rsa_iss.private_key)),
        ("RS512 by the RSA issuer key", "RS512", rsa_iss, rs(rsa_iss.private_key, hashes.SHA512())),
        (
            "ES384 (SHA-384) by the EC issuer key",
            "ES384",
            ec_iss,
            es_raw(ec_iss.private_key, hashes.SHA384()),
        ),
        (
            "ES384 by a P-384 key",
            "ES384",
            ec_iss,
            es_raw(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
        ),
        ("ES256K", "ES256K", ec_iss, es_raw(ec.generate_private_key(ec.SECP256K1()))),
        ("EdDSA", "EdDSA", rsa_iss, ed25519.Ed25519PrivateKey.generate().sign),
        # HMAC keyed with the issuer's public PEM: the classic key-confusion attack.
        ("HS256 with the RSA public PEM", "HS256", rsa_iss, hs256(rsa_iss.public_pem())),
        ("HS256 with the EC public PEM", "HS256", ec_iss, hs256(ec_iss.public_pem())),
        (
            "HS256 with the RSA public DER",
            "HS256",
            rsa_iss,
            hs256(
                rsa_iss.private_key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ),
        ),
    ]
    for i, (label, alg, issuer, sign) in enumerate(cases):
        sub = f"alg-user-{i}"
        token = make_token({"alg": alg, "typ": "JWT"}, claims_for(issuer.issuer, sub), sign)
        await assert_refused(op, redis_srv, token, reference, label=label)
        assert token_keys(redis_srv, sub) == [], label
    # Control: the pinned algorithms with the real keys do enroll.
    for issuer in (rsa_iss, ec_iss):
        resp = await post_enroll(op, issuer.mint(f"pinned-{issuer.alg}"))
        assert resp.status_code == 201, resp.text


# =========================================================================== J06


async def test_j06_jku_and_x5u_are_refused_without_fetching(
    op: Operator, redis_srv: RedisServer
) -> None:
    reference = await reference_401(op)
    hits: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(4096))
        attacker_jwks = json.dumps({"keys": []}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(attacker_jwks)).encode()
            + b"\r\n\r\n"
            + attacker_jwks
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks.json"
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    try:
        async with server:
            for member in ("jku", "x5u"):
                for signer_name, sign in (
                    ("issuer key", legit_sign(rsa_issuer(op))),
                    ("attacker key", rs(attacker)),
                ):
                    sub = f"{member}-{signer_name.split()[0]}"
                    token = make_token(
                        {"alg": "RS256", "typ": "JWT", member: url, "kid": "k1"},
                        claims_for(sub=sub),
                        sign,
                    )
                    await assert_refused(
                        op, redis_srv, token, reference, label=f"{member} {signer_name}"
                    )
            await asyncio.sleep(0.3)  # give a (wrong) background fetch time to arrive
    finally:
        server.close()
    assert hits == [], "the operator fetched a URL named in a token header"


# =========================================================================== J07


def self_signed(
    key: rsa.RSAPrivateKey, name: str, issuer_key: Any = None, issuer_name: str | None = None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name or name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.BasicConstraints(ca=issuer_key is None, path_length=None), critical=True
        )
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


async def test_j07_x5c_chain_of_an_attacker_is_refused(
    op: Operator, redis_srv: RedisServer
) -> None:
    reference = await reference_401(op)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = self_signed(ca_key, "integration.test")
    leaf = self_signed(
        leaf_key, "integration.test", issuer_key=ca_key, issuer_name="integration.test"
    )
    x5c = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in (leaf, ca)
    ]
    token = make_token(
        {"alg": "RS256", "typ": "JWT", "x5c": x5c}, claims_for(sub="x5c-user"), rs(leaf_key)
    )
    await assert_refused(op, redis_srv, token, reference, label="x5c chain")
    # A self-signed single certificate, and an inline jwk, fare no better.
    token = make_token(
        {"alg": "RS256", "typ": "JWT", "x5c": x5c[1:]}, claims_for(sub="x5c-user"), rs(ca_key)
    )
    await assert_refused(op, redis_srv, token, reference, label="x5c self-signed")
    numbers = leaf_key.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "n": b64url(numbers.n.to_bytes(256, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
    }
    token = make_token(
        {"alg": "RS256", "typ": "JWT", "jwk": jwk}, claims_for(sub="x5c-user"), rs(leaf_key)
    )
    await assert_refused(op, redis_srv, token, reference, label="embedded jwk")
    assert token_keys(redis_srv, "x5c-user") == []


# =========================================================================== J08


WEIRD_KIDS: list[Any] = [
    "../../../../etc/passwd",
    "..",
    "keys/issuer.pem",
    "' OR '1'='1' --",
    "1; DROP TABLE keys",
    "k" * 10240,
    "k" * 129,
    "key\u0000id",
    "key id",
    "key\nid",
    "k\u00efd",
    1234,
    True,
    None,
    ["a", "b"],
    {"$ne": ""},
    "",
]
"""kids that cannot name a key configured by PEM: refused even over the issuer's own signature."""


async def test_j08_weird_kid_values(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i, kid in enumerate(WEIRD_KIDS):
        token = make_token(
            {"alg": "RS256", "typ": "JWT", "kid": kid}, claims_for(sub=f"kid-{i}"), rs(attacker)
        )
        await assert_refused(op, redis_srv, token, reference, label=f"attacker kid {kid!r:.40}")
    # The issuer's own signature does not carry them: a PEM issuer's kid is matched against
    # a strict form (it never becomes a path or a query), on the RSA and the EC issuer alike.
    for issuer in (rsa_issuer(op), ec_issuer(op)):
        for i, kid in enumerate(WEIRD_KIDS):
            token = make_token(
                {"alg": issuer.alg, "typ": "JWT", "kid": kid},
                claims_for(issuer.issuer, sub=f"kid-legit-{i}"),
                legit_sign(issuer),
            )
            label = f"{issuer.alg} issuer kid {kid!r:.40}"
            await assert_refused(op, redis_srv, token, reference, label=label)
    assert stored_keys(redis_srv) == set()


def thumbprint(issuer: Issuer) -> str:
    """RFC 7638 thumbprint of the issuer's public key, computed by joserfc (not our code)."""
    kty = "RSA" if isinstance(issuer.private_key, rsa.RSAPrivateKey) else "EC"
    return JWKRegistry.import_key(issuer.public_pem(), kty).thumbprint()


LEGITIMATE_KIDS = [
    "integration-key-2024",
    "2024-05-01",
    "3f2b8c1e-9d4a-4e7b-8f60-2a1c5d9e7b30",
    "urn:example:keys:1",
    "partner.example.signing.v2",
    "NjVBRjY5MDlCMUIwNzU4RTA2QzZFMDQ4QzQ2MDAyQjVDNjk1RTM2Qg",  # an x5t-like base64url value
    "k" * 128,
]


async def test_j08_issuers_that_name_their_key_enroll(op: Operator) -> None:
    """An issuer configured by PEM may send its key's RFC 7638 thumbprint, or a kid of its own
    making in the strict form, and still enroll."""
    for issuer in (rsa_issuer(op), ec_issuer(op)):
        for i, kid in enumerate([thumbprint(issuer), *LEGITIMATE_KIDS]):
            sub = f"named-{issuer.alg}-{i}"
            resp = await post_enroll(op, issuer.mint(sub, header={"kid": kid}))
            assert resp.status_code == 201, (kid, resp.text)
            assert resp.json()["tokenId"] == sub


async def test_j08_an_issuer_with_a_configured_kid_accepts_only_its_names(
    make_operator: OperatorFactory, redis_srv: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    """With ``kid`` in its table, an issuer's tokens carry that kid, the key's thumbprint, or
    none; any other kid, however well formed, is refused like a wrong key."""
    named = Issuer(issuer="https://named-integration.test", kind="EC")
    pem = tmp_path / "named-issuer.pem"
    pem.write_bytes(named.public_pem())
    extra = (
        "\n[[enrollment_issuers]]\n"
        f"issuer = {json.dumps(named.issuer)}\n"
        f"audience = {json.dumps(named.audience)}\n"
        f"public_key_file = {json.dumps(str(pem))}\n"
        'kid = "partner-key-7"\n'
    )
    async with make_operator(limits=LIMITS, extra=extra) as named_op:
        reference = await reference_401(named_op)
        for i, kid in enumerate(["partner-key-7", thumbprint(named), None]):
            header = {} if kid is None else {"kid": kid}
            resp = await post_enroll(named_op, named.mint(f"named-{i}", header=header))
            assert resp.status_code == 201, (kid, resp.text)
        others = ["partner-key-8", "Partner-key-7", "partner-key-7 ", *LEGITIMATE_KIDS]
        for i, kid in enumerate([*others, *WEIRD_KIDS]):
            token = make_token(
                {"alg": "ES256", "typ": "JWT", "kid": kid},
                claims_for(named.issuer, sub=f"other-{i}"),
                legit_sign(named),
            )
            await assert_refused(named_op, redis_srv, token, reference, label=f"kid {kid!r:.40}")
        # The configured kid names that issuer's key only: the default issuer's tokens with it
        # are held to the default issuer's own rule (a well-formed kid: accepted).
        resp = await post_enroll(
            named_op, named_op.issuer.mint("default-1", header={"kid": "partner-key-7"})
        )
        assert resp.status_code == 201, resp.text


# =========================================================================== J10


async def test_j10_unencoded_payload_is_refused(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    issuer = rsa_issuer(op)
    header = {"alg": "RS256", "typ": "JWT", "b64": False, "crit": ["b64"]}
    header_b64 = b64url(json.dumps(header).encode())

    # b64:false over an ordinary base64url payload part, correctly signed by the issuer: a
    # library that honoured b64/crit would verify it; we must refuse the header.
    claims = claims_for(sub="b64-user")
    token = make_token(header, claims, legit_sign(issuer))
    await assert_refused(op, redis_srv, token, reference, label="b64 false, encoded payload")

    # Detached payload (empty middle part), signature over a large unencoded payload.
    large = json.dumps({**claims, "pad": "x" * 12000}).encode()
    sig = b64url(legit_sign(issuer)(header_b64.encode() + b"." + large))
    await assert_refused(op, redis_srv, f"{header_b64}..{sig}", reference, label="detached")

    # Unencoded payload inline (under the token size limit): still refused.
    inline = json.dumps({**claims, "pad": "y" * 6000}).replace(".", "").encode()
    sig = b64url(legit_sign(issuer)(header_b64.encode() + b"." + inline))
    token = f"{header_b64}.{inline.decode()}.{sig}"
    await assert_refused(op, redis_srv, token, reference, label="inline unencoded")
    # Other members that change processing, on an otherwise valid issuer-signed token.
    for label, extra in (
        ("zip", {"zip": "DEF"}),
        ("crit", {"crit": ["exp"]}),
        ("cty", {"cty": "JWT"}),
        ("enc", {"enc": "A256GCM"}),
    ):
        token = make_token({"alg": "RS256", "typ": "JWT", **extra}, claims, legit_sign(issuer))
        await assert_refused(op, redis_srv, token, reference, label=label)
    assert token_keys(redis_srv, "b64-user") == []


async def test_j10_oversized_token_is_refused_before_parsing(
    op: Operator, redis_srv: RedisServer
) -> None:
    header_b64 = b64url(json.dumps({"alg": "RS256", "b64": False, "crit": ["b64"]}).encode())
    token = f"{header_b64}.{'A' * 40000}.{'B' * 342}"
    before = stored_keys(redis_srv)
    started = time.perf_counter()
    resp = await post_enroll(op, token)
    assert time.perf_counter() - started < 1.0
    # Catalogue J10: 401 with the size limit applied before parsing.
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_enrollment_token"
    assert stored_keys(redis_srv) == before


# =========================================================================== J11


async def test_j11_pbes2_jwe_is_refused_in_milliseconds(
    op: Operator, redis_srv: RedisServer
) -> None:
    reference = await reference_401(op)
    header = {
        "alg": "PBES2-HS512+A256KW",
        "enc": "A256GCM",
        "p2c": 10**9,
        "p2s": b64url(os.urandom(16)),
        "iss": ISSUER_URL,
    }
    parts = [
        b64url(json.dumps(header).encode()),
        b64url(os.urandom(40)),
        b64url(os.urandom(12)),
        b64url(os.urandom(200)),
        b64url(os.urandom(16)),
    ]
    token = ".".join(parts)
    started = time.perf_counter()
    await assert_refused(op, redis_srv, token, reference, label="PBES2 JWE")
    assert time.perf_counter() - started < 0.5
    # A JWE whose header says dir/A128GCM, for good measure.
    parts[0] = b64url(json.dumps({"alg": "dir", "enc": "A128GCM"}).encode())
    await assert_refused(op, redis_srv, ".".join(parts), reference, label="dir JWE")


# =========================================================================== J12


def _with_separator_chars(issuer: Issuer, sub: str) -> str:
    """A token that contains both '-' and '_' (so re-encoding with +/ changes it)."""
    for _ in range(200):
        token = issuer.mint(sub)
        if "-" in token and "_" in token:
            return token
    raise AssertionError("could not mint a token with - and _")


async def test_j12_base64url_must_be_canonical(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    issuer = rsa_issuer(op)
    token = _with_separator_chars(issuer, "b64-canon")
    header, payload, signature = token.split(".")
    assert len(signature) % 4 == 2  # 256 bytes -> 342 characters: 2 padding characters

    # The last character of the signature carries 4 unused bits: flipping one of them gives
    # the same bytes, which a lenient decoder would accept.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    variants = {
        "signature padded": f"{header}.{payload}.{signature}==",
        "payload padded": f"{header}.{payload}{'=' * (-len(payload) % 4) or '===='}.{signature}",
        "standard alphabet": token.replace("-", "+").replace("_", "/"),
        "space inside payload": f"{header}.{payload[:10]} {payload[10:]}.{signature}",
        "newline after header": f"{header}.\n{payload}.{signature}",
        "tab in signature": f"{header}.{payload}.{signature[:20]}\t{signature[20:]}",
        "leading space": f" {token}",
        "trailing newline": f"{token}\n",
        "non-canonical trailing bits": f"{header}.{payload}.{signature[:-1]}{last}",
    }
    for label, variant in variants.items():
        assert variant != token
        await assert_refused(op, redis_srv, variant, reference, label=label)
    # None of those burnt the jti: the canonical token still enrolls, exactly once.
    resp = await post_enroll(op, token)
    assert resp.status_code == 201, resp.text


# =========================================================================== J13


async def test_j13_duplicate_member_names_are_refused(op: Operator, redis_srv: RedisServer) -> None:
    issuer = rsa_issuer(op)
    sign = legit_sign(issuer)
    claims = claims_for(sub="victim-dup")
    body = json.dumps(claims)[1:-1]
    cases = {
        "duplicate alg": (b'{"alg":"RS256","typ":"JWT","alg":"none"}', json.dumps(claims).encode()),
        "duplicate typ": (b'{"alg":"RS256","typ":"JWT","typ":"JWT"}', json.dumps(claims).encode()),
        "duplicate sub": (
            b'{"alg":"RS256","typ":"JWT"}',
            ("{" + body + ',"sub":"attacker-dup"}').encode(),
        ),
        "duplicate aud": (
            b'{"alg":"RS256","typ":"JWT"}',
            ('{"aud":"someone-else",' + body + "}").encode(),
        ),
    }
    for label, (header, payload) in cases.items():
        before = stored_keys(redis_srv)
        resp = await post_enroll(op, make_token(header, payload, sign))
        assert resp.status_code in (400, 401), f"{label}: {resp.text}"
        expected = "invalid_enrollment_token" if resp.status_code == 401 else "invalid_request"
        assert resp.json()["error"] == expected, label
        assert stored_keys(redis_srv) == before, label
    assert token_keys(redis_srv, "victim-dup") == []
    assert token_keys(redis_srv, "attacker-dup") == []


# =========================================================================== J14


async def test_j14_our_own_tokens_are_not_enrollment_tokens(
    op: Operator, redis_srv: RedisServer
) -> None:
    reference = await reference_401(op)
    device = await op.enrolled("owner-01")
    assert device.enrollment is not None
    credential = device.enrollment.credential
    rp = op.rp()
    started = await rp.initiate("owner-01", ["identity:name"])
    resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
    assert resp.status_code == 200, resp.text
    id_token = (await rp.wait_result(started, timeout=5))["jwt"]

    await assert_refused(op, redis_srv, id_token, reference, label="our ID token")
    await assert_refused(op, redis_srv, credential, reference, label="our credential")


# =========================================================================== J21 / J22


async def test_j21_malformed_exp_is_refused(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    sign = legit_sign(rsa_issuer(op))
    header = {"alg": "RS256", "typ": "JWT"}
    for i, (label, exp_json) in enumerate(
        [
            ("string", '"9999999999"'),
            ("numeric string", f'"{int(time.time()) + 300}"'),
            ("float overflow", "1e400"),
            ("huge integer", "9" * 40),
            ("boolean", "true"),
            ("negative", "-1"),
            ("null", "null"),
            ("object", '{"$gt":0}'),
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
        ]
    ):
        claims = claims_for(sub=f"exp-{i}")
        del claims["exp"]
        payload = (json.dumps(claims)[:-1] + f', "exp": {exp_json}}}').encode()
        await assert_refused(
            op, redis_srv, make_token(header, payload, sign), reference, label=label
        )
        assert token_keys(redis_srv, f"exp-{i}") == []


@pytest.mark.parametrize("claim", ["exp", "aud", "iss", "sub", "jti"])
async def test_j22_required_claims(op: Operator, redis_srv: RedisServer, claim: str) -> None:
    reference = await reference_401(op)
    for issuer in (rsa_issuer(op), ec_issuer(op)):
        sub = f"missing-{claim}-{issuer.alg}"
        token = issuer.mint(sub, drop=(claim,))
        await assert_refused(op, redis_srv, token, reference, label=f"{issuer.alg} no {claim}")
        assert token_keys(redis_srv, sub) == []


async def test_sub_must_be_a_usable_token_id(op: Operator, redis_srv: RedisServer) -> None:
    """A `sub` that cannot be a tokenId (contract: ^[A-Za-z0-9._:@-]{1,128}$) is refused: in
    particular `|`, which would make signed messages ambiguous (catalogue A07)."""
    reference = await reference_401(op)
    issuer = rsa_issuer(op)
    for sub in ("a|b", "", " ", "x" * 129, "ünï", "a b", "a\nb", 42, None, ["a"]):
        claims = claims_for(sub="placeholder")
        claims["sub"] = sub
        token = make_token({"alg": "RS256", "typ": "JWT"}, claims, legit_sign(issuer))
        await assert_refused(op, redis_srv, token, reference, label=f"sub {sub!r:.20}")
    assert stored_keys(redis_srv) == set()


# =========================================================================== E01 / E03


async def test_e01_same_token_twice_is_a_replay(op: Operator, redis_srv: RedisServer) -> None:
    token = rsa_issuer(op).mint("replay-01")
    first = await post_enroll(op, token)
    assert first.status_code == 201, first.text
    device_before = redis_srv.cli("HGETALL", "idtoken:{t:replay-01}:device")
    # The same device, and an attacker's device that intercepted the token.
    for device in (None, new_device(op)):
        again = await post_enroll(op, token, device)
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "token_replayed"
        assert set(again.json()) == {"error", "error_description"}
    assert redis_srv.cli("HGETALL", "idtoken:{t:replay-01}:device") == device_before
    # One claim, outside the token's keys (a jti is single use whatever the sub), which
    # lives until exp + leeway (60 s), no longer: the token's exp is 300 s away.
    markers = [k for k in stored_keys(redis_srv) if k.startswith("idtoken:lock:{enroll-jti:")]
    assert len(markers) == 1, markers
    assert not [k for k in token_keys(redis_srv, "replay-01") if ":jti:" in k]
    ttl = int(redis_srv.cli("TTL", markers[0]))
    assert 300 + 60 - 10 <= ttl <= 300 + 60 + 2, ttl


async def test_e03_same_jti_from_two_issuers_is_accepted(op: Operator) -> None:
    jti = "shared-jti-0001"
    first = await post_enroll(op, rsa_issuer(op).mint("jti-user-a", jti=jti))
    second = await post_enroll(op, other_issuer(op).mint("jti-user-b", jti=jti))
    third = await post_enroll(op, ec_issuer(op).mint("jti-user-c", jti=jti))
    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 201), (
        first.text,
        second.text,
        third.text,
    )


async def test_e01_jti_is_single_use_per_issuer_whatever_the_subject(op: Operator) -> None:
    """Contract §2: `jti` single use; catalogue E01: the marker is keyed on iss + jti."""
    jti = "single-use-jti-0001"
    first = await post_enroll(op, rsa_issuer(op).mint("jti-sub-a", jti=jti))
    assert first.status_code == 201, first.text
    again = await post_enroll(op, rsa_issuer(op).mint("jti-sub-b", jti=jti))
    assert again.status_code == 409, again.text
    assert again.json()["error"] == "token_replayed"


# =========================================================================== E04 / E05 / E06


async def test_e04_lifetime_and_future_times(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    issuer = rsa_issuer(op)
    now = int(time.time())
    refused = {
        "exp a year away": issuer.mint("e04-a", lifetime=365 * 86400),
        "exp a day away": issuer.mint("e04-b", lifetime=86400),
        "exp a year away without iat": issuer.mint("e04-c", lifetime=365 * 86400, drop=("iat",)),
        "iat 2 min ahead": issuer.mint("e04-d", iat=now + 120, exp=now + 300),
        "nbf 2 min ahead": issuer.mint("e04-e", nbf=now + 120, exp=now + 300),
        "iat a day ahead": issuer.mint("e04-f", iat=now + 86400, exp=now + 86400 + 300),
        "expired": issuer.mint("e04-g", now=now - 1000),
    }
    for label, token in refused.items():
        await assert_refused(op, redis_srv, token, reference, label=label)
    accepted = {
        "iat 30 s ahead": issuer.mint("e04-h", iat=now + 30, exp=now + 300),
        "nbf 30 s ahead": issuer.mint("e04-i", nbf=now + 30, exp=now + 300),
        "10 min lifetime": issuer.mint("e04-j", lifetime=600),
        "just expired within leeway": issuer.mint("e04-k", iat=now - 100, exp=now - 20),
    }
    for label, token in accepted.items():
        resp = await post_enroll(op, token)
        assert resp.status_code == 201, f"{label}: {resp.text}"


async def test_e04_lifetime_and_leeway_are_configurable(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    """E04 with `[enrollment] max_token_lifetime = 120` and `leeway = 5`: what the defaults
    accept (a 5-minute token, iat 30 s ahead, expired 20 s ago) is refused, and tokens within
    the tighter bounds still enroll."""
    extra = "\n[enrollment]\nmax_token_lifetime = 120\nleeway = 5\n"
    async with make_operator(limits=LIMITS, extra=extra) as tight:
        reference = await reference_401(tight)
        issuer = tight.issuer
        now = int(time.time())
        refused = {
            "5 min lifetime": issuer.mint("e04t-a", lifetime=300),
            "iat 30 s ahead": issuer.mint("e04t-b", iat=now + 30, exp=now + 100),
            "expired 20 s ago": issuer.mint("e04t-c", iat=now - 100, exp=now - 20),
        }
        for label, token in refused.items():
            await assert_refused(tight, redis_srv, token, reference, label=label)
        accepted = {
            "2 min lifetime": issuer.mint("e04t-d", lifetime=120),
            "iat 3 s ahead": issuer.mint("e04t-e", iat=now + 3, exp=now + 100),
        }
        for label, token in accepted.items():
            resp = await post_enroll(tight, token)
            assert resp.status_code == 201, f"{label}: {resp.text}"


async def test_e05_audience_of_another_operator(op: Operator, redis_srv: RedisServer) -> None:
    reference = await reference_401(op)
    issuer = rsa_issuer(op)
    for i, aud in enumerate(["other-operator", ["other-operator"], "", ENROLL_AUDIENCE.upper(), 7]):
        token = issuer.mint(f"aud-{i}", aud=aud)
        await assert_refused(op, redis_srv, token, reference, label=f"aud {aud!r}")
    ok = await post_enroll(op, issuer.mint("aud-ok", aud=[ENROLL_AUDIENCE, "someone-else"]))
    assert ok.status_code == 201, ok.text


async def test_e06_issuer_signed_with_another_issuers_key(
    op: Operator, redis_srv: RedisServer
) -> None:
    reference = await reference_401(op)
    a, b, c = rsa_issuer(op), ec_issuer(op), other_issuer(op)
    cases = {
        "iss A, key C (both RSA)": make_token(
            {"alg": "RS256", "typ": "JWT"}, claims_for(a.issuer, "e06-a"), legit_sign(c)
        ),
        "iss C, key A": make_token(
            {"alg": "RS256", "typ": "JWT"}, claims_for(c.issuer, "e06-b"), legit_sign(a)
        ),
        "iss A, key B (EC)": make_token(
            {"alg": "ES256", "typ": "JWT"}, claims_for(a.issuer, "e06-c"), legit_sign(b)
        ),
        "unknown iss, key A": make_token(
            {"alg": "RS256", "typ": "JWT"}, claims_for("https://evil.test", "e06-d"), legit_sign(a)
        ),
        "iss with trailing slash": make_token(
            {"alg": "RS256", "typ": "JWT"}, claims_for(a.issuer + "/", "e06-e"), legit_sign(a)
        ),
    }
    for label, token in cases.items():
        await assert_refused(op, redis_srv, token, reference, label=label)
    assert stored_keys(redis_srv) == set()


# =========================================================================== E08 and conflicts


async def test_e08_reenrollment_replaces_the_device(op: Operator, redis_srv: RedisServer) -> None:
    issuer = rsa_issuer(op)
    old = new_device(op)
    await old.enroll(issuer.mint("e08-user", given_name="Old"))
    rp = op.rp()
    pending_before = await rp.initiate("e08-user", ["identity:name"])

    new = new_device(op)
    enrollment = await new.enroll(issuer.mint("e08-user", given_name="New"))  # 201 or raises
    assert enrollment.token_id == "e08-user"

    # The session pending at replacement time was ended.
    with pytest.raises(ResultError) as info:
        await rp.wait_result(pending_before, timeout=5)
    assert info.value.kind == "rejected"

    # The old device's credential + key no longer approve anything.
    started = await rp.initiate("e08-user", ["identity:name"])
    refused = await old.approve(started.session_id, started.auto_password, ["identity:name"])
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_signature"
    # ... nor list sessions.
    listing = await op.http.post("/auth/pending", json=old.pending_body())
    assert listing.status_code == 401, listing.text
    assert listing.json()["error"] == "invalid_signature"
    # The new device can.
    sessions = await new.pending()
    assert [s["sessionId"] for s in sessions] == [started.session_id]
    approved = await new.approve(started.session_id, started.auto_password, ["identity:name"])
    assert approved.status_code == 200, approved.text
    message = await rp.wait_result(started, timeout=5)
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["idtoken"] == {"tokenId": "e08-user", "givenName": "New"}


async def test_reenrollment_from_another_issuer_is_a_conflict(
    op: Operator, redis_srv: RedisServer
) -> None:
    first = await post_enroll(op, rsa_issuer(op).mint("conflict-user"))
    assert first.status_code == 201, first.text
    device_before = redis_srv.cli("HGETALL", "idtoken:{t:conflict-user}:device")
    for issuer in (other_issuer(op), ec_issuer(op)):
        token = issuer.mint("conflict-user")
        # A refused enrollment does not use the token up: the same answer again, no replay.
        for _ in range(2):
            resp = await post_enroll(op, token)
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"] == "token_conflict"
    assert redis_srv.cli("HGETALL", "idtoken:{t:conflict-user}:device") == device_before
    claims = [k for k in stored_keys(redis_srv) if k.startswith("idtoken:lock:{enroll-jti:")]
    assert len(claims) == 1, claims  # the first enrollment's, none for the refused ones


# =========================================================================== J20 device keys


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")


def ec_spki_pem(point: bytes, curve_oid: bytes = OID_P256) -> str:
    der = _der(0x30, _der(0x30, OID_EC_PUBLIC_KEY + curve_oid) + _der(0x03, b"\x00" + point))
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


def public_pem(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def bad_device_keys() -> dict[str, str]:
    good = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = good.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_point = p384.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "off-curve point": ec_spki_pem(off_curve),
        "point at infinity": ec_spki_pem(b"\x00"),
        "zero coordinates": ec_spki_pem(b"\x04" + b"\x00" * 64),
        "P-384 point labelled P-256": ec_spki_pem(p384_point),
        "P-384 key": public_pem(p384),
        "secp256k1 key": public_pem(ec.generate_private_key(ec.SECP256K1()).public_key()),
        "RSA key": public_pem(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        ),
        "Ed25519 key": public_pem(ed25519.Ed25519PrivateKey.generate().public_key()),
        "garbage PEM": "-----BEGIN PUBLIC KEY-----\nAAAAAAAA\n-----END PUBLIC KEY-----\n",
        "not a PEM": "hello",
        "private key PEM": ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode(),
    }


async def test_j20_bad_device_keys_are_400_and_store_nothing(
    op: Operator, redis_srv: RedisServer
) -> None:
    issuer = rsa_issuer(op)
    token = issuer.mint("j20-user")
    for label, pem in bad_device_keys().items():
        device = new_device(op)
        body = device.enroll_body(token)
        body["publicKeyPem"] = pem
        before = stored_keys(redis_srv)
        resp = await op.http.post("/enroll", json=body)
        assert resp.status_code == 400, f"{label}: {resp.text}"
        assert resp.json()["error"] == "invalid_request", label
        assert stored_keys(redis_srv) == before, label
    assert token_keys(redis_srv, "j20-user") == []
    # Nothing was burnt: the token still enrolls a proper P-256 device.
    resp = await post_enroll(op, token)
    assert resp.status_code == 201, resp.text


# =========================================================================== device signature


async def test_bad_enroll_signature_is_401_and_burns_nothing(
    op: Operator, redis_srv: RedisServer
) -> None:
    token = rsa_issuer(op).mint("sig-user")
    device = new_device(op)
    stranger = new_device(op)
    good = device.enroll_body(token)
    ts = good["timestamp"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    variants = {
        "signed by another key": {
            **good,
            "signature": stranger.sign(f"enroll|{device.device_id}|{ts}|{digest}"),
        },
        "other device id signed": {
            **good,
            "signature": device.sign(f"enroll|other-device|{ts}|{digest}"),
        },
        "other token digest": {
            **good,
            "signature": device.sign(f"enroll|{device.device_id}|{ts}|{'0' * 64}"),
        },
        "other timestamp signed": {
            **good,
            "signature": device.sign(f"enroll|{device.device_id}|{ts + 1}|{digest}"),
        },
        "zero signature": {**good, "signature": b64url(b"\x00" * 64)},
        "DER signature": {
            **good,
            "signature": b64url(
                device.private_key.sign(
                    f"enroll|{device.device_id}|{ts}|{digest}".encode(), ec.ECDSA(hashes.SHA256())
                )
            ),
        },
    }
    for label, body in variants.items():
        before = stored_keys(redis_srv)
        resp = await op.http.post("/enroll", json=body)
        assert resp.status_code == 401, f"{label}: {resp.text}"
        assert resp.json()["error"] == "invalid_signature", label
        assert stored_keys(redis_srv) == before, label
    assert token_keys(redis_srv, "sig-user") == []
    resp = await op.http.post("/enroll", json=good)
    assert resp.status_code == 201, resp.text


async def test_enroll_timestamp_window(op: Operator, redis_srv: RedisServer) -> None:
    device = new_device(op)
    now = int(time.time() * 1000)
    for label, ts in (
        ("10 min old", now - 600_000),
        ("10 min ahead", now + 600_000),
        ("31 s old", now - 31_000),
    ):
        token = rsa_issuer(op).mint(f"ts-user-{label.split()[0]}")
        before = stored_keys(redis_srv)
        resp = await op.http.post("/enroll", json=device.enroll_body(token, timestamp=ts))
        assert resp.status_code == 401, f"{label}: {resp.text}"
        assert resp.json()["error"] == "invalid_signature"
        assert stored_keys(redis_srv) == before, label
    resp = await op.http.post(
        "/enroll", json=device.enroll_body(rsa_issuer(op).mint("ts-ok"), timestamp=now - 20_000)
    )
    assert resp.status_code == 201, resp.text


# =========================================================================== rate limit


async def test_enroll_rate_limit_per_ip(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator() as operator:  # default: 5 enrollments per IP per hour
        for i in range(5):
            resp = await post_enroll(operator, operator.issuer.mint(f"rate-{i}"))
            assert resp.status_code == 201, f"attempt {i + 1}: {resp.text}"
        resp = await post_enroll(operator, operator.issuer.mint("rate-5"))
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"] == "too_many_requests"
        retry_after = int(resp.headers["retry-after"])
        assert 1 <= retry_after <= 3600
        assert token_keys(redis_srv, "rate-5") == []

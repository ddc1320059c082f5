"""Strict compact JWS parsing, pinned verification and claim times (catalogue J01-J21)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256, SHA384, SHA512

from idtoken.jose import (
    P256_ORDER,
    CompactJWS,
    ES256Signer,
    JoseError,
    StrictJsonError,
    b64url_decode,
    b64url_encode,
    check_times,
    loads_strict_json,
    numeric_date,
    parse_compact,
    parse_compact_raw,
    sign_compact,
    verifier_for,
    verify_signature,
)

Sign = Callable[[bytes], bytes]


# --------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_json(value: dict[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def make_token(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sign: Sign) -> str:
    signing_input = f"{b64(encode_json(header))}.{b64(encode_json(payload))}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def raw_es(key: ec.EllipticCurvePrivateKey, hash_cls: type[SHA256 | SHA384] = SHA256) -> Sign:
    size = (key.curve.key_size + 7) // 8

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_cls())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return sign


def der_es(key: ec.EllipticCurvePrivateKey) -> Sign:
    return lambda data: key.sign(data, ec.ECDSA(SHA256()))


def rs(key: rsa.RSAPrivateKey, hash_cls: type[SHA256 | SHA512] = SHA256) -> Sign:
    return lambda data: key.sign(data, padding.PKCS1v15(), hash_cls())


def ps256(key: rsa.RSAPrivateKey) -> Sign:
    pss = padding.PSS(mgf=padding.MGF1(SHA256()), salt_length=32)
    return lambda data: key.sign(data, pss, SHA256())


def reason(excinfo: pytest.ExceptionInfo[JoseError]) -> str:
    return excinfo.value.reason


CLAIMS = {"iss": "https://issuer.example", "sub": "user-1", "exp": 2_000_000_000}


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def es_token(ec_key: ec.EllipticCurvePrivateKey) -> str:
    return make_token({"alg": "ES256", "typ": "JWT", "kid": "k1"}, CLAIMS, raw_es(ec_key))


@pytest.fixture(scope="module")
def rs_token(rsa_key: rsa.RSAPrivateKey) -> str:
    return make_token({"alg": "RS256", "kid": "k1"}, CLAIMS, rs(rsa_key))


# --------------------------------------------------------------------------- base64url


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"\xff\xfe\xfd\x00", bytes(range(256))])
def test_b64url_round_trip(data: bytes) -> None:
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert b64url_decode(encoded) == data


@pytest.mark.parametrize(
    "value",
    [
        "Zm8=",  # padding (J12)
        "Zg==",
        "+/8A",  # standard alphabet (J12)
        "/w",
        "Zm 8",  # whitespace (J12)
        "Zm8\n",
        " Zm8",
        "\tZm8",
        "Z",  # length % 4 == 1 can never be valid
        "Zm9vY",
        "Zh",  # trailing bits set: "Zg" is the canonical encoding of b"f"
        "Zm9",  # canonical is "Zm8"
        "Zm9v.",
        "Zm9vé",
        "Zm9v\x00",
    ],
)
def test_b64url_strict_rejections(value: str) -> None:
    with pytest.raises(JoseError):
        b64url_decode(value)


def test_b64url_rejects_non_str() -> None:
    with pytest.raises(JoseError):
        b64url_decode(b"Zm8")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a":1,"b":[true,false,null],"c":"x"}', {"a": 1, "b": [True, False, None], "c": "x"}),
        (b'"a\\u0000b"', "a\x00b"),  # NUL inside a string is valid JSON and must not crash
        (b'["\\ud83d\\ude00"]', ["\U0001f600"]),  # a surrogate *pair* is fine
        (b'["\\\\ud800"]', ["\\ud800"]),  # an escaped backslash, not a surrogate escape
        (b"1" * 30, int("1" * 30)),
        (b"-" + b"9" * 30, -int("9" * 30)),
        (b"1.5e300", 1.5e300),
        (b"[" * 32 + b"]" * 32, None),  # exactly the maximum depth
        (b'["' + b"[" * 1000 + b'"]', ["[" * 1000]),  # brackets inside strings do not nest
        (b'{"k":"' + b"{" * 100 + b'\\"}"}', {"k": "{" * 100 + '"}'}),
        ('"caf\u00e9"'.encode(), "café"),
    ],
)
def test_strict_json_accepts(raw: bytes, expected: Any) -> None:
    value = loads_strict_json(raw)
    if expected is not None:
        assert value == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'\xef\xbb\xbf{"a":1}',  # BOM
        b'{"a":"\xff"}',  # invalid UTF-8
        b'{"a":"\xc0\xaf"}',  # overlong encoding
        b'"\xed\xa0\x80"',  # UTF-8-encoded surrogate (CESU)
        '{"a":1}'.encode("utf-16"),
        b'{"a":1,"a":2}',  # duplicate member (J13)
        b'{"x":{"a":1,"a":1}}',
        b'[{"b":1},{"b":2,"b":3}]',
        b"NaN",
        b"[Infinity]",
        b'{"a":-Infinity}',
        b"1e400",  # overflows to inf
        b"-1e400",
        b"1" * 31,
        b"1" * 5000,
        b'{"exp":' + b"9" * 5000 + b"}",
        b"[" * 33 + b"]" * 33,
        b"[" * 100_000,
        b"]" * 40 + b"[" * 60 + b"]" * 60,  # closers first cannot offset deeper nesting
        b"{" * 100_000,
        b'{"a":' * 100_000,
        b'"' + b'\\"' * 50_000,  # unterminated string of escaped quotes
        b'["\\ud800"]',  # lone surrogate
        b'{"\\udc00":1}',
        b"",
        b"{",
        b"{'a':1}",
        b'{"a":1,}',
        b"[1] [2]",
    ],
)
def test_strict_json_rejects(raw: bytes) -> None:
    with pytest.raises(StrictJsonError) as excinfo:
        loads_strict_json(raw)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.reason


def test_strict_json_rejects_non_bytes() -> None:
    with pytest.raises(StrictJsonError):
        loads_strict_json('{"a":1}')  # type: ignore[arg-type]


def test_strict_json_deep_nesting_is_cheap() -> None:
    # M04: 100 000 opening brackets are refused by the pre-scan with "too_deep", never by
    # the recursive decoder (which would mean RecursionError or a crashed worker).
    for raw in (b"[" * 100_000, b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 50_000):
        with pytest.raises(StrictJsonError) as excinfo:
            loads_strict_json(raw)
        assert excinfo.value.reason == "too_deep"


# --------------------------------------------------------------------------- parse_compact


def test_parse_compact_good(es_token: str) -> None:
    jws = parse_compact(es_token)
    assert isinstance(jws, CompactJWS)
    assert jws.header == {"alg": "ES256", "typ": "JWT", "kid": "k1"}
    assert jws.payload == CLAIMS
    assert jws.signing_input == es_token.rsplit(".", 1)[0].encode()
    assert len(jws.signature) == 64


@pytest.mark.parametrize("token", [None, 1, b"a.b.c", ["a", "b", "c"], {"a": 1}])
def test_parse_compact_rejects_non_str(token: object) -> None:
    with pytest.raises(JoseError, match="not_a_string"):
        parse_compact(token)


def test_parse_compact_length_checked_first(es_token: str) -> None:
    with pytest.raises(JoseError, match="too_long"):
        parse_compact(es_token, max_length=len(es_token) - 1)
    assert parse_compact(es_token, max_length=len(es_token)).header["alg"] == "ES256"
    # Over the limit is refused before anything is decoded, whatever the content.
    with pytest.raises(JoseError, match="too_long"):
        parse_compact("é" * 20_000)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: t.rsplit(".", 1)[0],  # two parts
        lambda t: t + ".",
        lambda t: t + ".e30",
        lambda t: t + ".e30.e30.e30",
        lambda t: "." + t,
        lambda t: t.replace(".", "..", 1),
        lambda t: t.replace(".", "é", 1),
    ],
)
def test_parse_compact_rejects_bad_shapes(es_token: str, mangle: Callable[[str], str]) -> None:
    with pytest.raises(JoseError):
        parse_compact(mangle(es_token))


def test_parse_compact_rejects_non_ascii(es_token: str) -> None:
    with pytest.raises(JoseError, match="not_ascii"):
        parse_compact(es_token + "é")


def test_j01_alg_none_with_empty_signature(ec_key: ec.EllipticCurvePrivateKey) -> None:
    for alg in ("none", "None", "NONE", "nOnE"):
        token = f"{b64(json.dumps({'alg': alg}).encode())}.{b64(json.dumps(CLAIMS).encode())}."
        with pytest.raises(JoseError, match="empty_signature"):
            parse_compact(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", "es256", "Es256", "ES256 ", "RS256"])
def test_j01_alg_none_or_variant_with_signature(
    ec_key: ec.EllipticCurvePrivateKey, alg: str
) -> None:
    # Even signed correctly with the configured key, only the exact pinned name is accepted.
    token = make_token({"alg": alg}, CLAIMS, raw_es(ec_key))
    with pytest.raises(JoseError) as excinfo:
        verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(token))
    assert reason(excinfo) == "alg_mismatch"


def test_empty_signature_rejected(es_token: str) -> None:
    with pytest.raises(JoseError, match="empty_signature"):
        parse_compact(es_token.rsplit(".", 1)[0] + ".")


def test_j11_jwe_refused_unread() -> None:
    header = {"alg": "PBES2-HS512+A256KW", "enc": "A256GCM", "p2c": 10**9, "p2s": "AAAAAAAAAAA"}
    jwe = ".".join([b64(json.dumps(header).encode()), "AAAA", "AAAAAAAAAAAAAAAA", "AAAA", "AAAA"])
    started = time.perf_counter()
    with pytest.raises(JoseError, match="jwe_not_accepted"):
        parse_compact(jwe)
    elapsed = time.perf_counter() - started
    # Not asserted (machines vary), only recorded: the refusal never derives a key.
    print(f"JWE refused in {elapsed * 1000:.3f} ms")
    # A PBES2 header squeezed into a three-part token is refused on its members instead.
    with pytest.raises(JoseError, match="header_member_not_allowed"):
        parse_compact(make_token(header, CLAIMS, lambda data: b"x"))


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://attacker.example/jwks.json"},  # J06
        {"x5u": "https://attacker.example/cert.pem"},  # J06
        {"x5c": ["MIIB"]},  # J07
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
        {"crit": ["exp"]},
        {"b64": False},  # J10
        {"zip": "DEF"},
        {"enc": "A256GCM"},
        {"p2c": 10**9},
        {"cty": "JWT"},
        {"x5t": "AAAA"},
        {"x5t#S256": "AAAA"},
        {"iss": "https://issuer.example"},
    ],
)
def test_refused_header_members_even_with_valid_signature(
    ec_key: ec.EllipticCurvePrivateKey, extra: dict[str, Any]
) -> None:
    token = make_token({"alg": "ES256", "kid": "k1", **extra}, CLAIMS, raw_es(ec_key))
    with pytest.raises(JoseError, match="header_member_not_allowed"):
        parse_compact(token)


def test_j07_x5c_chain_of_attacker_key(rsa_key: rsa.RSAPrivateKey) -> None:
    # An attacker's self-consistent token: signed by their key, their "chain" in x5c. Our
    # verifier is pinned to the configured key, and x5c is refused before that anyway.
    attacker = ec.generate_private_key(ec.SECP256R1())
    spki = attacker.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "ES256", "x5c": [base64.b64encode(spki).decode()]}
    token = make_token(header, CLAIMS, raw_es(attacker))
    with pytest.raises(JoseError):
        parse_compact(token)
    allowed = frozenset({"alg", "x5c"})
    jws = parse_compact(token, allowed_header=allowed)
    with pytest.raises(JoseError):
        verifier_for(rsa_key.public_key(), "RS256").verify(jws)


def test_allowed_header_can_be_narrowed(es_token: str) -> None:
    with pytest.raises(JoseError, match="header_member_not_allowed"):
        parse_compact(es_token, allowed_header=frozenset({"alg", "kid"}))


def test_j10_b64_false_large_detached_payload(ec_key: ec.EllipticCurvePrivateKey) -> None:
    header = b64(json.dumps({"alg": "ES256", "b64": False, "crit": ["b64"]}).encode())
    token = f"{header}.{'A' * 1_000_000}.{'A' * 86}"
    with pytest.raises(JoseError, match="too_long"):
        parse_compact(token)
    with pytest.raises(JoseError, match="header_member_not_allowed"):
        parse_compact(f"{header}.{b64(b'{}')}.{'A' * 86}")


@pytest.mark.parametrize(
    "kid",
    [
        "x" * 10_240,
        "x" * 257,
        "",
        "a\x00b",
        "a\nb",
        "kid\u00e9",
        "\u202e",
        12,
        1.5,
        True,
        None,
        ["k1"],
        {"k": "v"},
    ],
)
def test_j08_bad_kid(ec_key: ec.EllipticCurvePrivateKey, kid: object) -> None:
    token = make_token({"alg": "ES256", "kid": kid}, CLAIMS, raw_es(ec_key))
    with pytest.raises(JoseError) as excinfo:
        parse_compact(token)
    assert reason(excinfo) in {"bad_kid", "too_long"}


@pytest.mark.parametrize(
    "kid",
    [
        "a",
        "x" * 256,
        " !~",
        "kid-rsa-sign",
        "bilbo.baggins@hobbiton.example",
        # J08: hostile but printable kids are opaque strings, passed on unchanged so that the
        # key lookup (an exact dict lookup) finds no key: "same as an unknown kid".
        "../../../../etc/passwd",
        "' OR '1'='1",
        "%2e%2e%2f",
        "k1 ",
    ],
)
def test_printable_kids_are_opaque(ec_key: ec.EllipticCurvePrivateKey, kid: str) -> None:
    token = make_token({"alg": "ES256", "kid": kid}, CLAIMS, raw_es(ec_key))
    assert parse_compact(token).header["kid"] == kid


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"kid": "k1"},
        {"alg": None},
        {"alg": 256},
        {"alg": ["ES256"]},
        {"alg": {"name": "ES256"}},
        {"alg": "ES256", "typ": 1},
        {"alg": "ES256", "typ": None},
    ],
)
def test_bad_alg_or_typ(ec_key: ec.EllipticCurvePrivateKey, header: dict[str, Any]) -> None:
    with pytest.raises(JoseError):
        parse_compact(make_token(header, CLAIMS, raw_es(ec_key)))


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b'["ES256"]', b"{}"),
        (b'"ES256"', b"{}"),
        (b"null", b"{}"),
        (b"not json", b"{}"),
        (b'{"alg":"ES256"}', b"[]"),
        (b'{"alg":"ES256"}', b'"claims"'),
        (b'{"alg":"ES256"}', b"42"),
        (b'{"alg":"ES256"}', b""),
        (b'{"alg":"ES256"}', b"foo"),
        (b'{"alg":"ES256"}', b'{"exp":1e400}'),  # J21: float overflow never parses
        (b'{"alg":"ES256"}', b'{"exp":NaN}'),
        (b'{"alg":"ES256"}', b'{"exp":' + b"9" * 5000 + b"}"),
        (b'\xef\xbb\xbf{"alg":"ES256"}', b"{}"),
        (b'{"alg":"ES256"}', b'{"sub":"\xff"}'),
    ],
)
def test_header_and_payload_must_be_strict_json_objects(
    ec_key: ec.EllipticCurvePrivateKey, header: bytes, payload: bytes
) -> None:
    with pytest.raises(JoseError):
        parse_compact(make_token(header, payload, raw_es(ec_key)))


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b'{"alg":"ES256","alg":"none"}', b"{}"),
        (b'{"alg":"none","alg":"ES256"}', b"{}"),
        (b'{"alg":"ES256","kid":"a","kid":"b"}', b"{}"),
        (b'{"alg":"ES256"}', b'{"sub":"alice","sub":"admin"}'),
        (b'{"alg":"ES256"}', b'{"aud":"a","idtoken":{"tokenId":"a","tokenId":"b"}}'),
    ],
)
def test_j13_duplicate_names(
    ec_key: ec.EllipticCurvePrivateKey, header: bytes, payload: bytes
) -> None:
    token = make_token(header, payload, raw_es(ec_key))
    with pytest.raises(JoseError) as excinfo:
        parse_compact(token)
    assert reason(excinfo) in {"bad_header_json", "bad_payload_json"}


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s + "=" * (-len(s) % 4 or 4),  # padding
        lambda s: s.replace("-", "+").replace("_", "/") if ("-" in s or "_" in s) else "+" + s,
        lambda s: s[:4] + " " + s[4:],
        lambda s: s[:4] + "\n" + s[4:],
        lambda s: s + "\t",
    ],
)
def test_j12_non_canonical_base64url_in_any_part(
    es_token: str, part: int, mangle: Callable[[str], str]
) -> None:
    parts = es_token.split(".")
    parts[part] = mangle(parts[part])
    with pytest.raises(JoseError):
        parse_compact(".".join(parts))


def test_j12_trailing_bits(ec_key: ec.EllipticCurvePrivateKey) -> None:
    # A signature whose last character carries non-zero unused bits decodes to the same
    # bytes in lenient decoders; here it is refused.
    token = make_token({"alg": "ES256"}, CLAIMS, raw_es(ec_key))
    head, sig = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]
    assert tweaked != sig
    with pytest.raises(JoseError):
        parse_compact(f"{head}.{tweaked}")


def test_parse_compact_raw_keeps_non_json_payload(ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = make_token({"alg": "ES256"}, b"foo", raw_es(ec_key))
    raw = parse_compact_raw(token)
    assert raw.payload_bytes == b"foo"
    verifier_for(ec_key.public_key(), "ES256").verify(raw)
    with pytest.raises(JoseError, match="bad_payload_json"):
        parse_compact(token)


# --------------------------------------------------------------------------- verification


def test_es256_and_rs256_verify(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey, es_token: str, rs_token: str
) -> None:
    verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(es_token))
    verifier_for(rsa_key.public_key(), "RS256").verify(parse_compact(rs_token))
    verify_signature(parse_compact(es_token), ec_key.public_key(), "ES256")
    verify_signature(parse_compact(rs_token), rsa_key.public_key(), "RS256")
    assert verifier_for(ec_key.public_key(), "ES256").alg == "ES256"


def test_tampered_tokens_rejected(ec_key: ec.EllipticCurvePrivateKey, es_token: str) -> None:
    verifier = verifier_for(ec_key.public_key(), "ES256")
    head, _, sig = es_token.split(".")
    forged_payload = b64(json.dumps({**CLAIMS, "sub": "admin"}).encode())
    with pytest.raises(JoseError, match="bad_signature"):
        verifier.verify(parse_compact(f"{head}.{forged_payload}.{sig}"))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(JoseError, match="bad_signature"):
        verifier.verify(parse_compact(make_token({"alg": "ES256"}, CLAIMS, raw_es(other))))


def test_j03_es256_header_on_rsa_key_and_reverse(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey, es_token: str, rs_token: str
) -> None:
    with pytest.raises(JoseError, match="alg_mismatch"):
        verifier_for(rsa_key.public_key(), "RS256").verify(parse_compact(es_token))
    with pytest.raises(JoseError, match="alg_mismatch"):
        verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(rs_token))
    # An RS256-signed token relabelled ES256 for the EC verifier fails on the signature.
    relabelled = make_token({"alg": "ES256"}, CLAIMS, rs(rsa_key))
    with pytest.raises(JoseError):
        verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(relabelled))


def test_j03_other_algorithms_refused(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    es_verifier = verifier_for(ec_key.public_key(), "ES256")
    rs_verifier = verifier_for(rsa_key.public_key(), "RS256")
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ec_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    p384 = ec.generate_private_key(ec.SECP384R1())
    k1 = ec.generate_private_key(ec.SECP256K1())
    ed = ed25519.Ed25519PrivateKey.generate()
    # Each token is correctly signed for the algorithm its header names, by the configured
    # key where that key can do it (the classic confusion attacks).
    tokens = {
        "PS256": make_token({"alg": "PS256"}, CLAIMS, ps256(rsa_key)),
        "RS512": make_token({"alg": "RS512"}, CLAIMS, rs(rsa_key, SHA512)),
        "ES384": make_token({"alg": "ES384"}, CLAIMS, raw_es(p384, SHA384)),
        "ES256K": make_token({"alg": "ES256K"}, CLAIMS, raw_es(k1)),
        "ES256 on secp256k1": make_token({"alg": "ES256"}, CLAIMS, raw_es(k1)),
        "EdDSA": make_token({"alg": "EdDSA"}, CLAIMS, ed.sign),
        "HS256 keyed with RSA PEM": make_token(
            {"alg": "HS256"}, CLAIMS, lambda d: hmac.new(rsa_pem, d, hashlib.sha256).digest()
        ),
        "HS256 keyed with EC PEM": make_token(
            {"alg": "HS256"}, CLAIMS, lambda d: hmac.new(ec_pem, d, hashlib.sha256).digest()
        ),
    }
    for name, token in tokens.items():
        jws = parse_compact(token)
        for verifier in (es_verifier, rs_verifier):
            with pytest.raises(JoseError):
                verifier.verify(jws)
            print(name, "refused")


def test_verifier_for_pins_key_types(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Deliberately weak (J19): the verifier must refuse it.
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    cases: list[tuple[object, str]] = [
        (rsa_key.public_key(), "ES256"),
        (ec_key.public_key(), "RS256"),
        (ec.generate_private_key(ec.SECP384R1()).public_key(), "ES256"),
        (ec.generate_private_key(ec.SECP256K1()).public_key(), "ES256"),
        (small_rsa.public_key(), "RS256"),  # J19
        (ec_key, "ES256"),  # a private key is not a verification key
        (rsa_key, "RS256"),
        (ed25519.Ed25519PrivateKey.generate().public_key(), "ES256"),
        (b"secret", "ES256"),
        (ec_key.public_key(), "PS256"),
        (rsa_key.public_key(), "PS256"),
        (rsa_key.public_key(), "none"),
        (ec_key.public_key(), "es256"),
    ]
    for key, alg in cases:
        with pytest.raises(ValueError):
            verifier_for(key, alg)  # type: ignore[arg-type]
        jws = parse_compact(make_token({"alg": alg}, CLAIMS, lambda d: b"sig"))
        with pytest.raises(JoseError, match="key_not_usable"):
            verify_signature(jws, key, alg)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "transform",
    [
        "der",
        "63",
        "65",
        "66",
        "empty_pad",
        "r_zero",
        "s_zero",
        "r_n",
        "s_n",
        "r_plus_n",
    ],
)
def test_j16_es256_signature_forms(ec_key: ec.EllipticCurvePrivateKey, transform: str) -> None:
    header = {"alg": "ES256"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(CLAIMS).encode())}"
    good = raw_es(ec_key)(signing_input.encode())
    r, s = int.from_bytes(good[:32], "big"), int.from_bytes(good[32:], "big")
    n = P256_ORDER
    forms: dict[str, bytes] = {
        "der": der_es(ec_key)(signing_input.encode()),
        "63": good[:63],
        "65": good + b"\x00",
        "66": b"\x00" + good[:32] + b"\x00" + good[32:],
        "empty_pad": b"\x00" * 64,
        "r_zero": bytes(32) + good[32:],
        "s_zero": good[:32] + bytes(32),
        "r_n": n.to_bytes(32, "big") + good[32:],
        "s_n": good[:32] + n.to_bytes(32, "big"),
        "r_plus_n": (r + n).to_bytes(33, "big") + s.to_bytes(32, "big"),
    }
    token = f"{signing_input}.{b64(forms[transform])}"
    with pytest.raises(JoseError):
        verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(token))


def test_es256_high_s_is_the_same_signature(ec_key: ec.EllipticCurvePrivateKey) -> None:
    # ECDSA signatures are malleable (s and n - s both verify); ES256 (RFC 7518) does not
    # forbid it and Wycheproof lists it as valid, so it is accepted. Replay protection
    # never relies on signature bytes being unique.
    token = make_token({"alg": "ES256"}, CLAIMS, raw_es(ec_key))
    head, sig = token.rsplit(".", 1)
    raw = b64url_decode(sig)
    s = int.from_bytes(raw[32:], "big")
    flipped = raw[:32] + (P256_ORDER - s).to_bytes(32, "big")
    verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(f"{head}.{b64(flipped)}"))


def test_rs256_signature_length_is_exact(rsa_key: rsa.RSAPrivateKey, rs_token: str) -> None:
    verifier = verifier_for(rsa_key.public_key(), "RS256")
    head, sig = rs_token.rsplit(".", 1)
    raw = b64url_decode(sig)
    for bad in (b"\x00" + raw, raw + b"\x00", raw[1:], raw[:-1], b"\x00" * 256):
        with pytest.raises(JoseError):
            verifier.verify(parse_compact(f"{head}.{b64(bad)}"))


# --------------------------------------------------------------------------- claim times


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (1, 1), (1_700_000_000, 1_700_000_000), (1.9, 1), (2**40 - 1, 2**40 - 1)],
)
def test_numeric_date_accepts(value: float, expected: int) -> None:
    assert numeric_date({"exp": value}, "exp", required=True) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2000000000",  # J21: string
        "",
        True,  # J21: boolean
        False,
        -1,  # J21: negative
        -0.5,
        float("inf"),  # J21: float overflow (1e400)
        float("-inf"),
        float("nan"),
        2**40,
        10**400,
        None,
        [2_000_000_000],
        {"t": 1},
    ],
)
def test_j21_numeric_date_rejects(value: object) -> None:
    with pytest.raises(JoseError, match="bad_exp"):
        numeric_date({"exp": value}, "exp", required=True)
    with pytest.raises(JoseError, match="bad_nbf"):
        numeric_date({"nbf": value}, "nbf", required=False)


def test_numeric_date_missing() -> None:
    with pytest.raises(JoseError, match="missing_exp"):
        numeric_date({}, "exp", required=True)
    assert numeric_date({}, "iat", required=False) is None


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("payload", "kwargs", "expected"),
    [
        ({"exp": NOW + 60}, {}, None),
        ({"exp": NOW - 59}, {}, None),  # within leeway
        ({"exp": NOW - 60}, {}, "expired"),  # exp must be strictly after now - leeway
        ({"exp": NOW - 61}, {}, "expired"),
        ({}, {}, "missing_exp"),
        ({}, {"require_exp": False}, None),
        ({"exp": "soon"}, {}, "bad_exp"),
        ({"exp": NOW + 60, "nbf": NOW + 60}, {}, None),
        ({"exp": NOW + 600, "nbf": NOW + 61}, {}, "not_yet_valid"),
        ({"exp": NOW + 600, "iat": NOW + 60}, {}, None),
        ({"exp": NOW + 600, "iat": NOW + 61}, {}, "issued_in_future"),
        ({"exp": NOW + 600, "iat": True}, {}, "bad_iat"),
        ({"exp": NOW + 600, "nbf": -5}, {}, "bad_nbf"),
        ({"exp": NOW + 600, "iat": NOW}, {"max_lifetime": 600}, None),
        ({"exp": NOW + 660, "iat": NOW}, {"max_lifetime": 600}, None),  # + leeway
        ({"exp": NOW + 661, "iat": NOW}, {"max_lifetime": 600}, "lifetime_too_long"),
        ({"exp": NOW + 365 * 86400, "iat": NOW}, {"max_lifetime": 600}, "lifetime_too_long"),
        ({"exp": NOW + 365 * 86400}, {"max_lifetime": 600}, "lifetime_too_long"),  # from now
        ({"exp": NOW + 600}, {"max_lifetime": 600}, None),
        # An old iat stretches the measured lifetime, so backdating cannot extend it.
        ({"exp": NOW + 60, "iat": NOW - 3600}, {"max_lifetime": 600}, "lifetime_too_long"),
    ],
)
def test_check_times(payload: dict[str, Any], kwargs: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        check_times(payload, now=NOW, leeway=60, **kwargs)
    else:
        with pytest.raises(JoseError) as excinfo:
            check_times(payload, now=NOW, leeway=60, **kwargs)
        assert reason(excinfo) == expected


# --------------------------------------------------------------------------- signing


def test_sign_compact_round_trip(ec_key: ec.EllipticCurvePrivateKey) -> None:
    payload = {"sub": "tok-1", "name": "Zoë 山田", "exp": 2_000_000_000}
    token = sign_compact({"typ": "JWT", "kid": "key-1"}, payload, ES256Signer(ec_key))
    head = token.split(".")[0]
    assert b64url_decode(head) == b'{"alg":"ES256","typ":"JWT","kid":"key-1"}'
    jws = parse_compact(token)
    assert jws.payload == payload
    assert len(jws.signature) == 64
    verifier_for(ec_key.public_key(), "ES256").verify(jws)
    # Compact separators: no whitespace in the serialised JSON.
    assert b" " not in b64url_decode(token.split(".")[1]).replace("Zoë 山田".encode(), b"")


def test_sign_compact_alg_comes_from_signer(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = ES256Signer(ec_key)
    assert parse_compact(sign_compact({"alg": "ES256"}, {}, signer)).header == {"alg": "ES256"}
    for alg in ("none", "RS256", "HS256"):
        with pytest.raises(ValueError):
            sign_compact({"alg": alg}, {}, signer)
    with pytest.raises(ValueError):
        sign_compact({}, {"exp": float("nan")}, signer)


def test_sign_compact_keeps_the_order_of_a_header_that_names_alg(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    # The VAPID header is {"typ":"JWT","alg":"ES256"}, exactly, as push services are sent it.
    token = sign_compact({"typ": "JWT", "alg": "ES256"}, {"b": 1, "a": 2}, ES256Signer(ec_key))
    head, payload, _ = token.split(".")
    assert b64url_decode(head) == b'{"typ":"JWT","alg":"ES256"}'
    assert b64url_decode(payload) == b'{"b":1,"a":2}'
    verifier_for(ec_key.public_key(), "ES256").verify(parse_compact(token))


def test_es256_signer_requires_p256() -> None:
    with pytest.raises(ValueError):
        ES256Signer(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError):
        ES256Signer(rsa.generate_private_key(65537, 2048))  # type: ignore[arg-type]


def test_es256_signer_signatures_are_fixed_length(ec_key: ec.EllipticCurvePrivateKey) -> None:
    # Small r or s must still be left-padded to 32 bytes; 200 signatures make a short one
    # (leading zero byte, probability 1/128 each) very likely to occur at least once.
    signer = ES256Signer(ec_key)
    verifier = verifier_for(ec_key.public_key(), "ES256")
    for i in range(200):
        token = sign_compact({}, {"i": i}, signer)
        jws = parse_compact(token)
        assert len(jws.signature) == 64
        verifier.verify(jws)

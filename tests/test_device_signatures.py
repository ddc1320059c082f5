"""Device P-256 keys and their raw ES256 signatures (catalogue J16, J20)."""

from __future__ import annotations

import base64
import textwrap
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from joserfc.jwk import ECKey, RSAKey

from idtoken.jose import P256_ORDER, b64url_decode, b64url_encode
from idtoken.keys.device import (
    DeviceKeyError,
    jwk_thumbprint,
    key_from_jwk,
    load_device_public_key,
    public_jwk,
    verify_device_signature,
)

MESSAGE = "sess_abc|123456|1700000000000|identity:name identity:age_over_18"


def spki_der(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_of(der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def as_joserfc(jwk: dict[str, str]) -> dict[str, str | list[str]]:
    return dict(jwk)


def raw_sign(key: ec.EllipticCurvePrivateKey, message: str) -> bytes:
    r, s = decode_dss_signature(key.sign(message.encode(), ec.ECDSA(SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# The SPKI header of every uncompressed P-256 key: SEQUENCE { AlgorithmIdentifier
# (id-ecPublicKey, prime256v1), BIT STRING (66 bytes, 0 unused bits) }.
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


@pytest.fixture(scope="module")
def device() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def device_pem(device: ec.EllipticCurvePrivateKey) -> str:
    return pem_of(spki_der(device.public_key()))


# --------------------------------------------------------------------------- loading


def test_load_good_p256_pem(device: ec.EllipticCurvePrivateKey, device_pem: str) -> None:
    key = load_device_public_key(device_pem)
    assert key.public_numbers() == device.public_key().public_numbers()
    # Without the trailing newline, and with CRLF line ends as a phone may send it.
    assert load_device_public_key(device_pem.strip()).curve.name == "secp256r1"
    assert load_device_public_key(device_pem.replace("\n", "\r\n")).curve.name == "secp256r1"


def _pem_for_point(point: bytes) -> str:
    bitstring = b"\x03" + bytes([len(point) + 1]) + b"\x00" + point
    algid = P256_SPKI_PREFIX[2:23]
    body = algid + bitstring
    return pem_of(b"\x30" + bytes([len(body)]) + body)


def _bad_pems(device_pem: str, device: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    der = spki_der(device.public_key())
    numbers = device.public_key().public_numbers()
    x, y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
    off_curve_y = (numbers.y ^ 1).to_bytes(32, "big")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_point = p384.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    secp256k1 = ec.generate_private_key(ec.SECP256K1()).public_key()
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    private_pem = device.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert_like = device_pem.replace("PUBLIC KEY", "CERTIFICATE")
    return {
        "not a str": device_pem.encode(),
        "None": None,
        "empty": "",
        "garbage": "hello world",
        "garbage in armour": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "two blocks": device_pem + device_pem,
        "text before": "key:\n" + device_pem,
        "text after": device_pem + "trailer\n",
        "over 1024 chars": device_pem + " " * 1024,
        "non-ascii": device_pem.replace("-----\n", "-----\u00e9\n", 1),
        "RSA": pem_of(spki_der(rsa_key)),
        "P-384": pem_of(spki_der(p384)),
        "secp256k1": pem_of(spki_der(secp256k1)),
        "Ed25519": pem_of(
            ed_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ),
        "private key": private_pem,
        "certificate label": cert_like,
        "DER not PEM": base64.b64encode(der).decode(),
        "off-curve point": _pem_for_point(b"\x04" + x + off_curve_y),
        "point at infinity": _pem_for_point(b"\x00"),
        "P-384 point labelled P-256": _pem_for_point(p384_point),
        "x and y swapped": _pem_for_point(b"\x04" + y + x),
        "zero point": _pem_for_point(b"\x04" + bytes(64)),
        "truncated point": _pem_for_point(b"\x04" + x + y[:31]),
        # Valid alternative encodings of the device's own point: one key, one encoding.
        "compressed point": _pem_for_point(
            device.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
        ),
        "hybrid form": _pem_for_point(bytes([6 + (numbers.y & 1)]) + x + y),
        "body with a space": device_pem.replace("\n", " \n", 1).replace("M", "M ", 1),
        "body with bad char": device_pem.replace("M", "M*", 1),
        "empty body": "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----",
        "missing end": device_pem.replace("-----END PUBLIC KEY-----", ""),
        "nested begin": device_pem.replace("\n", "\n-----BEGIN PUBLIC KEY-----\n", 1),
    }


def test_load_rejects_bad_keys(device: ec.EllipticCurvePrivateKey, device_pem: str) -> None:
    accepted = []
    for name, pem in _bad_pems(device_pem, device).items():
        try:
            load_device_public_key(pem)
        except DeviceKeyError as exc:
            assert exc.reason in {"bad_public_key", "unsupported_key"}
        else:
            accepted.append(name)
    assert accepted == []


# --------------------------------------------------------------------------- JWKs


def test_public_jwk_and_thumbprint_match_joserfc(device: ec.EllipticCurvePrivateKey) -> None:
    jwk = public_jwk(device.public_key())
    assert set(jwk) == {"kty", "crv", "x", "y"}
    assert (jwk["kty"], jwk["crv"]) == ("EC", "P-256")
    assert len(b64url_decode(jwk["x"])) == len(b64url_decode(jwk["y"])) == 32
    assert jwk_thumbprint(jwk) == ECKey.import_key(as_joserfc(jwk)).thumbprint()
    # Optional members never change the thumbprint.
    assert jwk_thumbprint({**jwk, "kid": "k", "use": "sig"}) == jwk_thumbprint(jwk)


def test_public_jwk_pads_short_coordinates() -> None:
    # About 1 key in 128 has a coordinate with a leading zero byte; make sure we find one.
    for _ in range(2000):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        numbers = key.public_numbers()
        if numbers.x < 2**248 or numbers.y < 2**248:
            break
    else:
        pytest.fail("no key with a short coordinate in 2000 tries")
    jwk = public_jwk(key)
    assert len(jwk["x"]) == len(jwk["y"]) == 43
    assert key_from_jwk(jwk).public_numbers() == numbers
    assert jwk_thumbprint(jwk) == ECKey.import_key(as_joserfc(jwk)).thumbprint()


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 §3.1: the RSA example key and its published thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwk_thumbprint(jwk) == RSAKey.import_key(as_joserfc(jwk)).thumbprint()


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": 1, "y": "AAAA"},
        {"crv": "P-256", "x": "AAAA", "y": "AAAA"},
    ],
)
def test_thumbprint_rejects_incomplete_jwks(jwk: dict[str, Any]) -> None:
    with pytest.raises(DeviceKeyError):
        jwk_thumbprint(jwk)


def test_key_from_jwk_round_trip_and_cache(device: ec.EllipticCurvePrivateKey) -> None:
    jwk = public_jwk(device.public_key())
    first = key_from_jwk(jwk)
    assert first.public_numbers() == device.public_key().public_numbers()
    # The second import of the same coordinates is served from the cache.
    assert key_from_jwk(dict(jwk)) is first


def _bad_jwks(device: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    jwk = public_jwk(device.public_key())
    numbers = device.public_key().public_numbers()
    off_curve_y = b64url_encode((numbers.y ^ 1).to_bytes(32, "big"))
    p384 = ECKey.generate_key("P-384").as_dict(private=False)
    return {
        "not a mapping": [jwk],
        "str": "jwk",
        "extra kid": {**jwk, "kid": "k"},
        "extra d": {**jwk, "d": jwk["x"]},
        "extra use": {**jwk, "use": "sig"},
        "missing y": {k: v for k, v in jwk.items() if k != "y"},
        "kty RSA": {**jwk, "kty": "RSA"},
        "crv P-384 label": {**jwk, "crv": "P-384"},
        "P-384 key": p384,
        "P-384 coords labelled P-256": {**p384, "crv": "P-256"},
        "secp256k1": {**jwk, "crv": "secp256k1"},
        "x not str": {**jwk, "x": 1},
        "padded x": {**jwk, "x": jwk["x"] + "="},
        "std alphabet": {**jwk, "x": jwk["x"].replace("-", "+").replace("_", "/") + "+"},
        "short x": {**jwk, "x": jwk["x"][:-1]},
        "33-byte x": {**jwk, "x": b64url_encode(b"\x00" + b64url_decode(jwk["x"]))},
        "trailing bits": {**jwk, "x": jwk["x"][:-1] + ("B" if jwk["x"][-1] == "A" else "A")},
        "off curve": {**jwk, "y": off_curve_y},
        "zero point": {**jwk, "x": b64url_encode(bytes(32)), "y": b64url_encode(bytes(32))},
    }


def test_key_from_jwk_rejects(device: ec.EllipticCurvePrivateKey) -> None:
    accepted = []
    for name, jwk in _bad_jwks(device).items():
        try:
            key_from_jwk(jwk)
        except DeviceKeyError:
            pass
        else:
            accepted.append(name)
    assert accepted == []


# --------------------------------------------------------------------------- signatures


def test_good_signature(device: ec.EllipticCurvePrivateKey) -> None:
    signature = b64url_encode(raw_sign(device, MESSAGE))
    verify_device_signature(device.public_key(), MESSAGE, signature)
    # Non-ASCII messages are signed as UTF-8.
    message = "sess_x|reject|1700000000000|Zoë"
    verify_device_signature(device.public_key(), message, b64url_encode(raw_sign(device, message)))


def test_wrong_message_or_key(device: ec.EllipticCurvePrivateKey) -> None:
    signature = b64url_encode(raw_sign(device, MESSAGE))
    with pytest.raises(DeviceKeyError, match="bad_signature"):
        verify_device_signature(device.public_key(), MESSAGE + " admin", signature)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(DeviceKeyError, match="bad_signature"):
        verify_device_signature(other, MESSAGE, signature)


def _bad_signatures(device: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    raw = raw_sign(device, MESSAGE)
    good = b64url_encode(raw)
    r, s = raw[:32], raw[32:]
    n = P256_ORDER.to_bytes(32, "big")
    der = device.sign(MESSAGE.encode(), ec.ECDSA(SHA256()))
    standard = base64.b64encode(raw).decode().rstrip("=")
    return {
        "bytes": raw,
        "None": None,
        "int": 1,
        "empty": "",
        "padded": base64.urlsafe_b64encode(raw).decode(),
        # The standard alphabet; forced to differ when this signature has no '-' or '_'.
        "standard base64": standard if standard != good else "+" + good[1:],
        "whitespace": good[:40] + " " + good[41:],
        "newline": good[:85] + "\n",
        "trailing bits": good[:-1] + ("B" if good[-1] == "A" else "A"),
        "non-ascii": good[:85] + "é",
        "DER": b64url_encode(der),
        "63 bytes": b64url_encode(raw[:63]),
        "65 bytes": b64url_encode(raw + b"\x00"),
        "65 bytes leading zero": b64url_encode(b"\x00" + raw),
        "66 bytes": b64url_encode(b"\x00" + r + b"\x00" + s),
        "r = 0": b64url_encode(bytes(32) + s),
        "s = 0": b64url_encode(r + bytes(32)),
        "r = s = 0": b64url_encode(bytes(64)),
        "r = n": b64url_encode(n + s),
        "s = n": b64url_encode(r + n),
        "r = s = 0xff..": b64url_encode(b"\xff" * 64),
        "s and r swapped": b64url_encode(s + r),
        "hex": raw.hex(),
    }


def test_bad_signature_encodings(device: ec.EllipticCurvePrivateKey) -> None:
    accepted = []
    for name, signature in _bad_signatures(device).items():
        try:
            verify_device_signature(device.public_key(), MESSAGE, signature)
        except DeviceKeyError as exc:
            assert exc.reason in {"bad_signature", "bad_signature_encoding"}
        else:
            accepted.append(name)
    assert accepted == []


def test_signature_checks_key_and_message_types(device: ec.EllipticCurvePrivateKey) -> None:
    signature = b64url_encode(raw_sign(device, MESSAGE))
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(DeviceKeyError, match="unsupported_key"):
        verify_device_signature(p384, MESSAGE, signature)
    with pytest.raises(DeviceKeyError, match="bad_message"):
        verify_device_signature(device.public_key(), MESSAGE.encode(), signature)  # type: ignore[arg-type]
    with pytest.raises(DeviceKeyError, match="bad_message"):
        verify_device_signature(device.public_key(), "\ud800", signature)

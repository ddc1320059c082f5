"""docs/test-vectors.json, checked with the operator's own code.

The vectors are what app developers in any language test their signing against (see
docs/mobile-app.md). Every message string must be exactly what the operator builds from the
vector's inputs, every valid signature must pass the operator's verifier, every invalid one
must be refused, and the key material must be internally consistent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from idtoken.client import Device
from idtoken.client.device import Enrollment
from idtoken.device_messages import (
    enroll_message,
    pending_message,
    reject_message,
    subscription_message,
    verify_message,
)
from idtoken.ids import result_hash
from idtoken.keys.device import (
    DeviceKeyError,
    jwk_thumbprint,
    key_from_jwk,
    load_device_public_key,
    public_jwk,
    verify_device_signature,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "docs" / "test-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
KEY: dict[str, Any] = VECTORS["key"]
MESSAGES: list[dict[str, Any]] = VECTORS["messages"]
NEGATIVE: list[dict[str, Any]] = VECTORS["negative"]
CONVERSIONS: list[dict[str, Any]] = VECTORS["der_to_raw"]
BY_ID = {v["id"]: v for v in MESSAGES}
KINDS = ("enroll", "verify", "reject", "pending", "subscription")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int(KEY["d_hex"], 16), ec.SECP256R1())


def vector_public_key() -> ec.EllipticCurvePublicKey:
    return load_device_public_key(KEY["spki_pem"])


def build_message(vector: dict[str, Any]) -> str:
    """The message the operator checks for this vector's inputs, built by its own code."""
    i = vector["inputs"]
    kind = vector["kind"]
    if kind == "enroll":
        return enroll_message(i["deviceId"], i["timestamp"], i["enrollmentToken"])
    if kind == "verify":
        return verify_message(
            i["sessionId"], i["otp"], i["timestamp"], i["grantedScopes"], i.get("bindingMessage")
        )
    if kind == "reject":
        return reject_message(i["sessionId"], i["timestamp"])
    if kind == "pending":
        return pending_message(i["tokenId"], i["timestamp"])
    if kind == "subscription":
        return subscription_message(i["tokenId"], i["endpoint"], i["timestamp"])
    raise AssertionError(f"unknown kind {kind!r}")


# ---------------------------------------------------------------------------- the file itself
def test_every_message_kind_is_covered() -> None:
    assert {v["kind"] for v in MESSAGES} == set(KINDS)
    scope_lists = [v["inputs"]["grantedScopes"] for v in MESSAGES if v["kind"] == "verify"]
    assert [] in scope_lists, "a verify vector with no granted scope"
    assert any(len(s) > 1 for s in scope_lists), "a verify vector with several scopes"
    assert all(v["valid"] is True for v in MESSAGES)
    assert len(NEGATIVE) >= 3
    assert all(v["valid"] is False for v in NEGATIVE)
    assert len({v["id"] for v in MESSAGES + NEGATIVE}) == len(MESSAGES) + len(NEGATIVE)


# ---------------------------------------------------------------------------- the key
def test_public_key_from_d_matches_jwk_pem_and_point() -> None:
    pub = private_key().public_key()
    assert public_jwk(pub) == KEY["public_jwk"]
    assert KEY["private_jwk"] == {
        **KEY["public_jwk"],
        "d": b64url(int(KEY["d_hex"], 16).to_bytes(32, "big")),
    }
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    assert pem == KEY["spki_pem"]
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki.hex() == KEY["spki_der_hex"]
    point = pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert point.hex() == KEY["public_uncompressed_hex"]
    # The fixed SPKI header of every P-256 key, then the uncompressed point.
    assert spki.hex() == "3059301306072a8648ce3d020106082a8648ce3d030107034200" + point.hex()


def test_pkcs8_pem_is_the_same_key() -> None:
    loaded = serialization.load_pem_private_key(KEY["pkcs8_pem"].encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers().private_value == int(KEY["d_hex"], 16)


def test_operator_accepts_the_pem_and_the_jwk() -> None:
    from_pem = vector_public_key()
    assert public_jwk(from_pem) == KEY["public_jwk"]
    assert public_jwk(key_from_jwk(KEY["public_jwk"])) == KEY["public_jwk"]


def test_jwk_thumbprint() -> None:
    jwk = KEY["public_jwk"]
    assert jwk_thumbprint(jwk) == KEY["jwk_thumbprint"]
    # RFC 7638: SHA-256 over the required members, sorted, no whitespace.
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    )
    assert canonical == KEY["thumbprint_input"]
    assert b64url(hashlib.sha256(canonical.encode()).digest()) == KEY["jwk_thumbprint"]


# ---------------------------------------------------------------------------- messages
@pytest.mark.parametrize("vector", MESSAGES, ids=[v["id"] for v in MESSAGES])
def test_message_is_what_the_operator_builds(vector: dict[str, Any]) -> None:
    assert build_message(vector) == vector["message"]
    assert vector["message"].encode("utf-8").hex() == vector["message_utf8_hex"]


def test_backchannel_vectors_append_the_binding_message_digest() -> None:
    backchannel = [v for v in MESSAGES if "bindingMessage" in v["inputs"]]
    assert len(backchannel) >= 2
    assert any(not v["inputs"]["bindingMessage"].isascii() for v in backchannel)
    for vector in backchannel:
        digest = hashlib.sha256(vector["inputs"]["bindingMessage"].encode("utf-8")).hexdigest()
        assert vector["binding_message_sha256"] == digest
        assert vector["message"].endswith("|" + digest)
        without = dict(vector["inputs"], bindingMessage=None)
        assert (
            vector["message"] == build_message({"kind": "verify", "inputs": without}) + "|" + digest
        )


def test_digests_inside_messages() -> None:
    enroll = BY_ID["enroll"]["inputs"]
    digest = hashlib.sha256(enroll["enrollmentToken"].encode()).hexdigest()
    assert digest == enroll["enrollmentToken_sha256_hex"]
    assert BY_ID["enroll"]["message"].endswith("|" + digest)
    sub = BY_ID["subscription"]["inputs"]
    digest = hashlib.sha256(sub["endpoint"].encode()).hexdigest()
    assert digest == sub["endpoint_sha256_hex"]
    assert BY_ID["subscription"]["message"].endswith("|" + digest)


def test_empty_grant_ends_with_a_bar() -> None:
    empty = next(v for v in MESSAGES if v["kind"] == "verify" and not v["inputs"]["grantedScopes"])
    assert empty["message"].endswith("|")
    assert empty["message"].count("|") == 3


# ---------------------------------------------------------------------------- signatures
@pytest.mark.parametrize("vector", MESSAGES, ids=[v["id"] for v in MESSAGES])
def test_valid_signature_verifies(vector: dict[str, Any]) -> None:
    assert len(vector["signature"]) == 86
    verify_device_signature(vector_public_key(), vector["message"], vector["signature"])


@pytest.mark.parametrize("vector", NEGATIVE, ids=[v["id"] for v in NEGATIVE])
def test_invalid_signature_is_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(DeviceKeyError) as caught:
        verify_device_signature(vector_public_key(), vector["message"], vector["signature"])
    assert caught.value.reason == vector["reason"]


@pytest.mark.parametrize("vector", MESSAGES, ids=[v["id"] for v in MESSAGES])
def test_signature_belongs_to_its_message_only(vector: dict[str, Any]) -> None:
    for other in MESSAGES:
        if other["message"] != vector["message"]:
            with pytest.raises(DeviceKeyError):
                verify_device_signature(vector_public_key(), other["message"], vector["signature"])


@pytest.mark.parametrize("conversion", CONVERSIONS, ids=[c["id"] for c in CONVERSIONS])
def test_der_to_raw(conversion: dict[str, Any]) -> None:
    r, s = decode_dss_signature(bytes.fromhex(conversion["der_hex"]))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert raw.hex() == conversion["raw_hex"]
    assert b64url(raw) == conversion["signature"] == BY_ID[conversion["vector"]]["signature"]
    verify_device_signature(
        vector_public_key(), BY_ID[conversion["vector"]]["message"], conversion["signature"]
    )


def test_conversion_vectors_cover_both_pitfalls() -> None:
    r_lengths = set()
    for conversion in CONVERSIONS:
        der = bytes.fromhex(conversion["der_hex"])
        r_lengths.add(der[3])  # SEQUENCE, length, INTEGER tag, r's length
    assert 33 in r_lengths, "an r with a 0x00 sign byte in DER"
    assert any(n < 32 for n in r_lengths), "an r shorter than 32 bytes in DER"


# ---------------------------------------------------------------------------- the result hash
def test_result_hash() -> None:
    h = VECTORS["result_hash"]
    assert h["hmac_message"] == f"{h['sessionId']}|{h['random']}|{h['jwt']}"
    assert result_hash(h["wsToken"], h["sessionId"], h["random"], h["jwt"]) == h["hash"]
    independent = hmac.new(
        h["wsToken"].encode(), h["hmac_message"].encode(), hashlib.sha256
    ).hexdigest()
    assert independent == h["hash"]
    assert h["hash"] == h["hash"].lower() and len(h["hash"]) == 64


# ---------------------------------------------------------------------------- the reference device
async def test_reference_device_signs_what_the_operator_verifies() -> None:
    key = vector_public_key()
    async with httpx.AsyncClient(base_url="http://operator.invalid") as http:
        device = Device(http, device_id="vector-device", private_key=private_key())
        assert device.public_key_pem == KEY["spki_pem"]
        for vector in MESSAGES:
            verify_device_signature(key, vector["message"], device.sign(vector["message"]))

        enroll = BY_ID["enroll"]["inputs"]
        device = Device(http, device_id=enroll["deviceId"], private_key=private_key())
        body = device.enroll_body(enroll["enrollmentToken"], timestamp=enroll["timestamp"])
        assert body["publicKeyPem"] == KEY["spki_pem"]
        verify_device_signature(key, BY_ID["enroll"]["message"], body["signature"])

        device.enrollment = Enrollment(
            token_id=BY_ID["pending"]["inputs"]["tokenId"],
            device_id=enroll["deviceId"],
            expires_at="2027-01-01T00:00:00Z",
            credential="not.a.credential",
        )
        for vector in (v for v in MESSAGES if v["kind"] == "verify"):
            i = vector["inputs"]
            binding = i.get("bindingMessage")
            body = device.verify_body(
                i["sessionId"],
                i["otp"],
                i["grantedScopes"],
                timestamp=i["timestamp"],
                binding_message=binding,
            )
            verify_device_signature(key, vector["message"], body["signature"])
            inputs = {**body, "bindingMessage": binding}
            assert build_message({"kind": "verify", "inputs": inputs}) == vector["message"]

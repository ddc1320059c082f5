"""Wycheproof vectors through our device-signature and JWS verification (catalogue J18).

The vectors are in ``tests/vectors/`` (see its README). A missing file fails these tests on
purpose: skipping would let the row silently stop being checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idtoken.jose import (
    JoseError,
    Verifier,
    b64url_decode,
    b64url_encode,
    parse_compact,
    parse_compact_raw,
    verifier_for,
)
from idtoken.keys.device import (
    DeviceKeyError,
    key_from_jwk,
    load_device_public_key,
    verify_device_signature,
)

VECTORS = Path(__file__).resolve().parent / "vectors"
ECDSA_FILE = "wycheproof_ecdsa_secp256r1_sha256_p1363_test.json"
JWS_FILE = "wycheproof_json_web_signature_test.json"


def load_vectors(name: str) -> dict[str, Any]:
    path = VECTORS / name
    assert path.is_file(), f"Wycheproof vectors missing: {path}"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_vectors_folder_present() -> None:
    assert VECTORS.is_dir(), f"{VECTORS} is missing"


# --------------------------------------------------------------------------- ECDSA P1363


def test_ecdsa_p256_sha256_p1363() -> None:
    data = load_vectors(ECDSA_FILE)
    failures: list[str] = []
    seen = 0
    for group in data["testGroups"]:
        assert group["type"] == "EcdsaP1363Verify" and group["sha"] == "SHA-256"
        # The device key arrives as an SPKI PEM at enrollment; load it the same way.
        key = load_device_public_key(group["publicKeyPem"])
        # The same key through the strict JWK path and from the raw point must agree. Not
        # every group carries a JWK (and those that do add a "kid" we do not allow), so the
        # JWK is built from the uncompressed point and compared with the group's when given.
        point = bytes.fromhex(group["publicKey"]["uncompressed"])
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(point[1:33]),
            "y": b64url_encode(point[33:]),
        }
        if "publicKeyJwk" in group:
            assert {name: group["publicKeyJwk"][name] for name in jwk} == jwk
        assert key_from_jwk(jwk).public_numbers() == key.public_numbers()
        assert (
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_numbers()
            == key.public_numbers()
        )
        for case in group["tests"]:
            seen += 1
            # Device messages are text; every Wycheproof message here is valid UTF-8, and
            # decoding then re-encoding valid UTF-8 gives back the same bytes.
            message = bytes.fromhex(case["msg"]).decode("utf-8")
            signature = b64url_encode(bytes.fromhex(case["sig"]))
            try:
                verify_device_signature(key, message, signature)
                accepted = True
            except DeviceKeyError:
                accepted = False
            # "acceptable" (none in this file today) is treated as must-reject: device
            # signatures are produced by our own apps, so we never need leniency.
            expected = case["result"] == "valid"
            if accepted != expected:
                failures.append(
                    f"tcId {case['tcId']} ({case['result']}, {case['comment']}): "
                    f"{'accepted' if accepted else 'rejected'}"
                )
    assert seen == data["numberOfTests"]
    assert failures == [], "Wycheproof ECDSA cases failed:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- JWS


def _public_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None:
    """The JWK's public key as a cryptography object; None for symmetric keys."""

    def integer(name: str) -> int:
        return int.from_bytes(b64url_decode(jwk[name]), "big")

    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(integer("e"), integer("n")).public_key()
    if jwk["kty"] == "EC":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        return ec.EllipticCurvePublicNumbers(
            integer("x"), integer("y"), curve[jwk["crv"]]
        ).public_key()
    return None


def _for_signatures(jwk: dict[str, Any]) -> bool:
    # Key-selection policy, as the operator's key loading applies it (catalogue K03): a key
    # marked for encryption, or whose key_ops exclude "verify", never verifies a token.
    # Wycheproof tcIds 353-356 (rejectWrongUse / rejectWrongKeyOps) are rejected here, by
    # selection: their signatures themselves are cryptographically valid.
    if jwk.get("use", "sig") != "sig":
        return False
    return "key_ops" not in jwk or "verify" in jwk["key_ops"]


def _pinned_alg(jwk: dict[str, Any]) -> str:
    # The algorithm comes from the key's configuration, never from a token header: the
    # JWK's own "alg" when it has one, otherwise the one algorithm we accept for its type.
    default = {"RSA": "RS256", "EC": "ES256"}.get(jwk["kty"], "HS256")
    return str(jwk.get("alg", default))


def _outcome(verifier: Verifier, token: object) -> tuple[bool, bool]:
    """(accepted by parse_compact_raw + verify, accepted by parse_compact + verify)."""
    results = []
    for parse in (parse_compact_raw, parse_compact):
        try:
            verifier.verify(parse(token))
            results.append(True)
        except JoseError:
            results.append(False)
    return results[0], results[1]


def test_jws_vectors() -> None:
    data = load_vectors(JWS_FILE)
    failures: list[str] = []
    verified = refused_keys = 0
    seen = 0
    for group in data["testGroups"]:
        assert group["type"] == "JsonWebSignature"
        jwk = group.get("public") or group["private"]
        key = _public_key(jwk)
        alg = _pinned_alg(jwk)
        seen += len(group["tests"])
        if key is None or alg not in ("RS256", "ES256"):
            # HS*, PS*, RS384/512 and ES512 keys: the operator refuses to configure them,
            # so every token for them is rejected, the "valid" ones included (RFC 8725:
            # accept only the algorithms you use).
            with pytest.raises(ValueError):
                verifier_for(key, alg)  # type: ignore[arg-type]
            refused_keys += len(group["tests"])
            continue
        verifier = verifier_for(key, alg)  # type: ignore[arg-type]
        usable = _for_signatures(jwk)
        for case in group["tests"]:
            raw_ok, strict_ok = _outcome(verifier, case["jws"])
            accepted = usable and raw_ok
            verified += 1
            expected = case["result"] == "valid"
            if accepted != expected:
                failures.append(
                    f"tcId {case['tcId']} ({case['result']}, {case['comment']}, key alg {alg}): "
                    f"{'accepted' if accepted else 'rejected'}"
                )
            # parse_compact only adds rules (a JSON-object payload), never removes one.
            if strict_ok and not raw_ok:
                failures.append(f"tcId {case['tcId']}: parse_compact accepted what raw refused")
    assert seen == data["numberOfTests"]
    assert verified > 250 and refused_keys > 100
    assert failures == [], "Wycheproof JWS cases failed:\n" + "\n".join(failures)


def test_jws_vectors_rejected_by_the_other_verifier() -> None:
    # Every ES256 token must fail on the RSA verifier and every RS256 token on the EC one,
    # whatever its validity: the header alg never selects the algorithm.
    data = load_vectors(JWS_FILE)
    by_comment = {group["comment"]: group for group in data["testGroups"]}
    ec_verifier = verifier_for(_public_key(by_comment["es256"]["public"]), "ES256")  # type: ignore[arg-type]
    rsa_verifier = verifier_for(_public_key(by_comment["rs256"]["public"]), "RS256")  # type: ignore[arg-type]
    accepted = []
    for group in data["testGroups"]:
        for case in group["tests"]:
            header_alg = "?"
            try:
                header_alg = parse_compact_raw(case["jws"]).header["alg"]
            except JoseError:
                continue
            other = rsa_verifier if header_alg == "ES256" else ec_verifier
            if any(_outcome(other, case["jws"])):
                accepted.append(f"tcId {case['tcId']} ({header_alg})")
    assert accepted == []

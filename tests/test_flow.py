"""The IDToken login flow end to end on a real uvicorn server and a real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest
import websockets
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import Operator, OperatorFactory
from idtoken.client import ResultError
from support import b64url


async def test_enroll_initiate_approve_delivers_verified_jwt_with_granted_claims(
    operator: Operator,
) -> None:
    device = await operator.enrolled(
        "user-1", given_name="Marie", family_name="Dupont", birthdate="1990-05-01"
    )
    rp = operator.rp()
    started = await rp.initiate("user-1", ["identity:name", "identity:age_over_18"], nonce="n-1")
    assert len(started.auto_password) == 6 and started.auto_password.isdigit()

    async with websockets.connect(rp.socket_url(started), compression=None) as sock:
        ready = json.loads(await sock.recv())
        assert ready == {
            "type": "otp_ready",
            "sessionId": started.session_id,
            "autoPassword": started.auto_password,
            "expiresAt": started.expires_at,
        }
        resp = await device.approve(
            started.session_id, started.auto_password, ["identity:age_over_18"]
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "approved"}
        approved = json.loads(await sock.recv())
        assert set(approved) == {"type", "jwt", "hash", "random", "expiresAt"}
        assert approved["type"] == "approved"
        assert approved["random"] == started.random
        assert rp.hash_ok(started, approved)
        await sock.wait_closed()
        assert sock.close_code == 1000

    # Verify with the JWKS fetched over HTTP, independently of our code.
    jwks = (await operator.http.get("/.well-known/jwks.json")).json()
    token = jwt.decode(approved["jwt"], KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert token.header["typ"] == "JWT" and token.header["alg"] == "ES256"
    claims = token.claims
    assert claims["iss"] == operator.settings.issuer
    assert claims["sub"] == "user-1"
    assert claims["aud"] == "shop-audience"
    assert claims["sid"] == started.session_id
    assert claims["nonce"] == "n-1"
    assert claims["scope"] == "identity:age_over_18"
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["idtoken"] == {"tokenId": "user-1", "age_over_18": True}
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "iat",
        "exp",
        "jti",
        "sid",
        "scope",
        "nonce",
        "idtoken",
    }
    verified = await rp.verify_jwt(approved["jwt"], session_id=started.session_id, nonce="n-1")
    assert verified["idtoken"] == claims["idtoken"]


async def test_late_socket_gets_the_decision_and_second_socket_replaces_first(
    operator: Operator,
) -> None:
    device = await operator.enrolled("user-2")
    rp = operator.rp()
    started = await rp.initiate("user-2")
    first = await websockets.connect(rp.socket_url(started), compression=None)
    assert json.loads(await first.recv())["type"] == "otp_ready"
    second = await websockets.connect(rp.socket_url(started), compression=None)
    assert json.loads(await second.recv())["type"] == "otp_ready"
    with pytest.raises(websockets.ConnectionClosed):
        await first.recv()
    assert first.close_code == 4009
    await second.close()

    resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
    assert resp.status_code == 200
    # A socket that connects after the decision receives it at once.
    message = await rp.wait_result(started, timeout=5)
    assert message["type"] == "approved"
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["idtoken"] == {"tokenId": "user-2"}  # no name claims were asserted


async def test_rejection_reaches_the_browser(operator: Operator) -> None:
    device = await operator.enrolled("user-3")
    rp = operator.rp()
    started = await rp.initiate("user-3")
    resp = await device.reject(started.session_id)
    assert resp.status_code == 200 and resp.json() == {"status": "rejected"}
    with pytest.raises(ResultError) as info:
        await rp.wait_result(started, timeout=5)
    assert info.value.kind == "rejected" and info.value.detail == "User rejected"


async def test_pending_lists_the_session_for_the_app(operator: Operator) -> None:
    device = await operator.enrolled("user-4")
    started = await operator.rp().initiate("user-4", ["identity:name"])
    sessions = await device.pending()
    assert sessions == [
        {
            "sessionId": started.session_id,
            "serviceId": "shop",
            "serviceName": "Example Shop",
            "scopes": ["identity:name"],
            "expiresAt": started.expires_at,
            "autoPassword": started.auto_password,
        }
    ]


async def test_jwks_and_discovery(operator: Operator) -> None:
    resp = await operator.http.get("/.well-known/jwks.json")
    assert resp.headers["cache-control"] == "public, max-age=3600"
    etag = resp.headers["etag"]
    (key,) = resp.json()["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "sig", "ES256")
    again = await operator.http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert again.status_code == 304
    disco = (await operator.http.get("/.well-known/openid-configuration")).json()
    assert disco["issuer"] == operator.settings.issuer
    assert disco["jwks_uri"] == operator.settings.issuer + "/.well-known/jwks.json"
    assert disco["id_token_signing_alg_values_supported"] == ["ES256"]
    assert "identity:age_over_18" in disco["scopes_supported"]
    assert "age_over_18" in disco["claims_supported"]


async def test_unknown_route_gets_a_contract_error(operator: Operator) -> None:
    resp = await operator.http.get("/nope")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "error_description": "no such endpoint"}
    resp = await operator.http.get("/auth/initiate")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


async def test_public_service_accepts_the_seed_call_without_authorization(
    operator: Operator,
) -> None:
    await operator.enrolled("user-5")
    resp = await operator.http.post(
        "/auth/initiate",
        json={
            "tokenId": "user-5",
            "serviceId": "shop",
            "scopes": ["identity:name", "identity:age_over_18"],
        },
    )
    assert resp.status_code == 201
    assert set(resp.json()) == {"sessionId", "autoPassword", "wsToken", "expiresAt", "random"}
    assert isinstance(httpx.Response, type)


async def test_x02_a_token_for_one_service_fails_another_services_verifier(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    services = [
        {"id": "shop", "audience": "shop-audience", "allowed_scopes": ["identity:name"]},
        {"id": "bank", "audience": "bank-audience", "allowed_scopes": ["identity:name"]},
    ]
    async with make_operator(services=services) as op:
        device = await op.enrolled("user-x2")
        shop = op.rp("shop")
        started = await shop.initiate("user-x2")
        resp = await device.approve(started.session_id, started.auto_password, [])
        assert resp.status_code == 200
        message = await shop.wait_result(started, timeout=5)
        assert (await shop.verify_jwt(message["jwt"]))["aud"] == "shop-audience"
        with pytest.raises(ResultError) as info:
            await op.rp("bank").verify_jwt(message["jwt"])
        assert info.value.kind == "invalid_jwt"


async def test_the_relying_party_client_refuses_forged_and_foreign_tokens(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """The reference client pins what an ID token is (RFC 8725): ES256 from the JWKS, `typ`
    JWT, our issuer and the service's audience. Forgeries and the operator's other signed
    tokens do not pass for one."""
    async with make_operator() as op:
        device = await op.enrolled("user-rp")
        rp = op.rp()
        started = await rp.initiate("user-rp")
        approved = await device.approve(started.session_id, started.auto_password, [])
        assert approved.status_code == 200, approved.text
        token = (await rp.wait_result(started, timeout=5))["jwt"]
        claims = await rp.verify_jwt(token, session_id=started.session_id)
        head, payload, signature = token.split(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=="))
        jwk = (await op.http.get("/.well-known/jwks.json")).json()["keys"][0]
        hs_head = b64url(json.dumps({**header, "alg": "HS256"}).encode())
        hs_secret = json.dumps(jwk).encode()  # the public key, as an HMAC secret
        hs_mac = hmac.new(hs_secret, f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
        keys = op.app.state.runtime.keys
        assert device.enrollment is not None
        forged = {
            "alg none": b64url(json.dumps({**header, "alg": "none"}).encode()) + f".{payload}.",
            "HS256 keyed with the public key": f"{hs_head}.{payload}.{b64url(hs_mac)}",
            "claims changed": f"{head}.{b64url(json.dumps({**claims, 'sub': 'eve'}).encode())}"
            + f".{signature}",
            "signature of another token": f"{head}.{payload}."
            + device.enrollment.credential.split(".")[2],
            "padded base64": f"{head}=.{payload}.{signature}",
            "unknown kid": b64url(json.dumps({**header, "kid": "nope"}).encode())
            + f".{payload}.{signature}",
            # Signed by the operator's own key, but not typed as an ID token.
            "typ at+jwt": keys.sign(dict(claims), typ="at+jwt"),
            "the phone's credential": device.enrollment.credential,
        }

        # Signed by the operator's real key over these exact bytes: only the header or JSON
        # rule can refuse them (the client is as strict as the operator, RFC 8725).
        def resigned(head_json: bytes, payload_json: bytes) -> str:
            signing_input = f"{b64url(head_json)}.{b64url(payload_json)}"
            return f"{signing_input}.{b64url(keys.active.signer.sign(signing_input.encode()))}"

        genuine_head = json.dumps(header).encode()
        genuine_payload = json.dumps(claims).encode()
        jwk_member = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y")}
        for member, value in {
            "jku": "http://127.0.0.1:9/jwks.json",
            "x5u": "http://127.0.0.1:9/cert.pem",
            "x5c": [base64.b64encode(b"not a certificate").decode()],
            "jwk": jwk_member,  # the operator's own key: honouring it would verify
            "x5t": b64url(hashlib.sha1(b"cert").digest()),  # noqa: S324 (a thumbprint's form)
            "x5t#S256": b64url(hashlib.sha256(b"cert").digest()),
            "cty": "JWT",
            "crit": ["exp"],
            "b64": True,
            "zip": "DEF",
            "enc": "A256GCM",
            "nonce": "n-1",
        }.items():
            head_json = json.dumps({**header, member: value}).encode()
            forged[f"header member {member}"] = resigned(head_json, genuine_payload)
        kid_twice = genuine_head[:-1] + f', "kid": {json.dumps(header["kid"])}}}'.encode()
        forged["kid twice in the header"] = resigned(kid_twice, genuine_payload)
        typ_twice = b'{"typ": "at+jwt", ' + genuine_head[1:]
        forged["typ twice in the header"] = resigned(typ_twice, genuine_payload)
        sub_twice = b'{"sub": "eve", ' + genuine_payload[1:]
        forged["sub twice in the claims"] = resigned(genuine_head, sub_twice)
        forged["NaN in the claims"] = resigned(
            genuine_head, genuine_payload[:-1] + b', "score": NaN}'
        )
        for name in ("kid", "typ"):
            head_json = json.dumps({k: v for k, v in header.items() if k != name}).encode()
            forged[f"no {name}"] = resigned(head_json, genuine_payload)
        for label, value in forged.items():
            with pytest.raises(ResultError) as info:
                await rp.verify_jwt(value)
            assert info.value.kind == "invalid_jwt", label
        # The genuine token still verifies, and so does the same header and payload re-signed
        # here: nothing above was refused for another reason.
        assert (await rp.verify_jwt(token))["sub"] == claims["sub"]
        resigned_token = resigned(genuine_head, genuine_payload)
        assert (await rp.verify_jwt(resigned_token))["sub"] == claims["sub"]
        assert json.loads(sub_twice)["sub"] == claims["sub"]  # Python keeps the last: genuine

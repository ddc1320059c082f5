"""Privacy of the OpenID Connect provider, against real operators (uvicorn, Redis).

No identity claim is at rest: after code-flow logins, collected or approved and waiting,
every key and value in Redis is free of the names, birth date, email address and document
number the users enrolled with, in clear or inside base64url. The ID token and userinfo carry
exactly the consented claims; a derived claim never carries its source; pairwise subjects
differ across sectors and are the same on every instance, restarts included.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import redis

from conftest import Operator, OperatorFactory
from idtoken.client import Device
from oidc_support import (
    CLIENT_SECRET,
    OIDC_CLIENT,
    HostedBrowser,
    authorize_path,
    code_login,
    id_token_claims,
    instances,
    on_instance,
    redeem,
    userinfo,
)
from support import DEFAULT_SERVICE
from test_kyc import (
    KYC_AUDIENCE,
    KYC_ISSUER,
    JwksServer,
    document,
    enrollment_payload,
    kyc_token,
    rsa_jwk,
    rsa_key,
)

SERVICES = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT)]
PROTOCOL_CLAIMS = {"iss", "sub", "aud", "exp", "iat", "auth_time", "jti", "acr", "amr", "at_hash"}
ALICE = {
    "given_name": "Quillonette",
    "family_name": "Vandersplunk",
    "birthdate": "1971-11-29",
    "email": "quillonette.v@privacy-test.example",
}
# Bob enrolls through a KYC provider (the only source of a document number): his passport's
# chip data, as seed 002's example with distinctive values.
BOB = {
    "given_name": "THADDEUSZ",
    "family_name": "ZORBLAXIAN",
    "birthdate": "1969-03-17",
    "document_number": "ZQ4815162",
}
EVERYTHING = "openid profile email identity:document identity:age_over_18"
GRANTS = ["identity:name", "identity:date_of_birth", "identity:email", "identity:age_over_18"]


async def consented(http: httpx.AsyncClient, access_token: str) -> dict[str, Any]:
    """The userinfo answer for a valid access token."""
    resp = await userinfo(http, access_token)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# ----------------------------------------------------------------------------- at rest
def kyc_enrollment() -> dict[str, Any]:
    payload = enrollment_payload()
    doc = document(payload)
    chip, scan = doc["reading"]["data"]["mrz"], doc["scan"]["front"]
    for fields in (chip, scan):
        fields["documentNumber"] = BOB["document_number"]
        fields["dateOfBirth"] = "690317"
    chip["primaryIdentifier"] = scan["primaryId"] = BOB["family_name"]
    chip["secondaryIdentifier"] = scan["secondaryId"] = BOB["given_name"]
    scan["mrzText"] = ""
    return payload


def dump_store(url: str) -> tuple[bytes, int]:
    """Every key of the store and every value it holds, and how many hashes hold an
    uncollected grant (the scan must have seen the logins it is about)."""
    client: Any = redis.Redis.from_url(url)  # bytes in, bytes out
    parts: list[bytes] = []
    waiting = 0
    try:
        for key in client.scan_iter(count=1000):
            parts.append(key)
            kind = client.type(key).decode()
            if kind == "string":
                parts.append(client.get(key) or b"")
            elif kind == "hash":
                fields = client.hgetall(key)
                waiting += b"grant" in fields
                for name, value in fields.items():
                    parts += [name, value]
            elif kind == "list":
                parts += client.lrange(key, 0, -1)
            elif kind == "set":
                parts += client.smembers(key)
            elif kind == "zset":
                parts += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, entry in client.xrange(key):
                    for name, value in entry.items():
                        parts += [name, value]
            else:
                raise AssertionError(f"a key of type {kind}: dump it too")
    finally:
        client.close()
    return b"\n".join(parts), waiting


def readable(dump: bytes) -> str:
    """The dump, and every base64url run in it decoded (a JWT's payload, say), lowercased."""
    out = [dump.decode("utf-8", "replace")]
    for run in re.findall(rb"[A-Za-z0-9_-]{16,}", dump):
        try:
            out.append(base64.urlsafe_b64decode(run + b"=" * (-len(run) % 4)).decode("latin-1"))
        except (binascii.Error, ValueError):
            continue
    return "\n".join(out).lower()


async def test_no_identity_claim_is_at_rest_after_code_flow_logins(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    jwks = await JwksServer().start()
    jwks.keys = [rsa_jwk(rsa_key("a"), "kyc-1")]
    kyc = (
        "\n[[enrollment_issuers]]\n"
        f'issuer = "{KYC_ISSUER}"\naudience = "{KYC_AUDIENCE}"\nformat = "uqudo"\n'
        f'jwks_uri = "{jwks.url}"\n'
    )
    try:
        async with make_operator(services=SERVICES, extra=kyc) as op:
            alice = await op.enrolled("alice", device_id="phone-a", **ALICE)
            bob = Device(op.http, device_id="phone-b")
            bob_id = (await bob.enroll(kyc_token(kyc_enrollment(), rsa_key("a")))).token_id
            users = ((alice, "alice", ALICE), (bob, bob_id, BOB))
            for device, token_id, identity in users:
                grants = [*GRANTS, "identity:document"] if device is bob else GRANTS
                # Collected: the tokens carry the values (so the scan below can find them).
                login = await code_login(
                    op.http, device, grants, token_id=token_id, scope=EVERYTHING
                )
                body = (await redeem(op.http, login.code, login.verifier)).json()
                released = json.dumps(
                    [
                        await id_token_claims(op.http, body["id_token"]),
                        await consented(op.http, body["access_token"]),
                    ]
                ).lower()
                for value in identity.values():
                    assert value.lower() in released, value
                # Approved, not collected yet: the tokens wait in the store.
                await code_login(op.http, device, grants, token_id=token_id, scope=EVERYTHING)
                # Refused on the phone, and one still waiting for it.
                browser = HostedBrowser(op.http)
                refused = await browser.start(
                    await browser.open(authorize_path(scope=EVERYTHING)), token_id
                )
                assert (await device.reject(refused.session_id)).status_code == 200
                await browser.start(await browser.open(authorize_path(scope=EVERYTHING)), token_id)

            dump, waiting = dump_store(redis_url)
            assert waiting == 2, "the uncollected logins' grants are in the store"
            text = readable(dump)
            for _, _, identity in users:
                for name, value in identity.items():
                    assert value.lower() not in text, f"{name} at rest"
    finally:
        await jwks.stop()


# ----------------------------------------------------------------------------- consent
async def test_id_token_and_userinfo_carry_exactly_the_consented_claims(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", **ALICE)
        no_email = await op.enrolled("user-2", device_id="phone-2", given_name="Ada")
        cases: list[tuple[Device, str, list[str], dict[str, Any], dict[str, Any]]] = [
            # the phone, who, what it grants, the idtoken object, the standard claims
            (device, "user-1", [], {}, {}),
            (
                device,
                "user-1",
                ["identity:email", "identity:age_over_18"],
                {"email": ALICE["email"], "age_over_18": True},
                {"email": ALICE["email"]},
            ),
            (
                device,
                "user-1",
                ["identity:date_of_birth"],
                {"dateOfBirth": ALICE["birthdate"]},
                {"birthdate": ALICE["birthdate"]},
            ),
            (
                device,
                "user-1",
                GRANTS,
                {
                    "givenName": ALICE["given_name"],
                    "familyName": ALICE["family_name"],
                    "dateOfBirth": ALICE["birthdate"],
                    "email": ALICE["email"],
                    "age_over_18": True,
                },
                {
                    "given_name": ALICE["given_name"],
                    "family_name": ALICE["family_name"],
                    "name": f"{ALICE['given_name']} {ALICE['family_name']}",
                    "birthdate": ALICE["birthdate"],
                    "email": ALICE["email"],
                },
            ),
            # Granted, but not a claim the credential holds: nothing.
            (no_email, "user-2", ["identity:email"], {}, {}),
        ]
        for phone, token_id, granted, idtoken, standard in cases:
            login = await code_login(
                op.http,
                phone,
                granted,
                token_id=token_id,
                scope="openid profile email identity:age_over_18",
            )
            body = (await redeem(op.http, login.code, login.verifier)).json()
            assert body["scope"] == " ".join(["openid", *granted])
            claims = await id_token_claims(op.http, body["id_token"])
            expected_idtoken = {"tokenId": token_id, **idtoken}
            assert set(claims) == PROTOCOL_CLAIMS | {"nonce", "idtoken"} | set(standard), granted
            assert claims["idtoken"] == expected_idtoken
            assert {k: claims[k] for k in standard} == standard
            info = await consented(op.http, body["access_token"])
            assert info == {"sub": token_id, **standard, "idtoken": expected_idtoken}

        # The phone cannot grant what the site did not ask for: no approval, no code.
        browser = HostedBrowser(op.http)
        started = await browser.start(
            await browser.open(authorize_path(scope="openid email")), "user-1"
        )
        resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
        assert resp.status_code == 400
        assert resp.json()["error"] == "invalid_request"
        pending = await op.http.post(
            "/authorize/complete",
            json={"sessionId": started.session_id, "wsToken": started.ws_token},
        )
        assert pending.status_code == 409


async def test_a_derived_claim_never_carries_its_source(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        adult = await op.enrolled("adult", **ALICE)
        minor = await op.enrolled(
            "minor", device_id="phone-2", given_name="Kid", birthdate="2015-06-30"
        )
        for device, token_id, over_18 in ((adult, "adult", True), (minor, "minor", False)):
            browser = HostedBrowser(op.http)
            config = await browser.open(authorize_path(scope="openid identity:age_over_18"))
            assert "Date of birth" not in json.dumps(config)
            login = await code_login(
                op.http,
                device,
                ["identity:age_over_18"],
                token_id=token_id,
                scope="openid identity:age_over_18",
            )
            resp = await redeem(op.http, login.code, login.verifier)
            body = resp.json()
            claims = await id_token_claims(op.http, body["id_token"])
            assert claims["idtoken"] == {"tokenId": token_id, "age_over_18": over_18}
            assert "birthdate" not in claims
            info = await op.http.get(
                "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
            )
            assert info.json() == {"sub": token_id, "idtoken": claims["idtoken"]}
            payload = base64.urlsafe_b64decode(body["id_token"].split(".")[1] + "==").decode()
            for text in (payload, resp.text, info.text):
                assert "1971" not in text and "2015" not in text
                assert "dateOfBirth" not in text and "birthdate" not in text


# ----------------------------------------------------------------------------- pairwise
def pairwise_client(client_id: str, redirect_uri: str, **extra: str) -> dict[str, Any]:
    return {
        **DEFAULT_SERVICE,
        "id": client_id,
        "name": client_id,
        "client_secret_sha256": hashlib.sha256(f"{client_id}-{CLIENT_SECRET}".encode()).hexdigest(),
        "redirect_uris": [redirect_uri],
        "subject_type": "pairwise",
        **extra,
    }


PAIRWISE = [
    pairwise_client("pair-a", "https://a.example/cb"),
    # Another host of the same sector (sector_identifier): the same subjects.
    pairwise_client("pair-a2", "https://login.partner.example/cb", sector_identifier="a.example"),
    pairwise_client("pair-b", "https://b.example/cb"),
]


async def pairwise_login(
    page: Operator, phone: Device, collect: Operator, client: dict[str, Any], token_id: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A login to ``client``: the page on one instance, the phone on its own, the tokens
    collected on a third; the ``sub``, the ID token's claims and the userinfo answer."""
    login = await code_login(
        page.http,
        phone,
        ["identity:name"],
        token_id=token_id,
        client_id=client["id"],
        redirect_uri=client["redirect_uris"][0],
        scope="openid identity:name",
    )
    resp = await redeem(
        collect.http,
        login.code,
        login.verifier,
        redirect_uri=client["redirect_uris"][0],
        auth=(client["id"], f"{client['id']}-{CLIENT_SECRET}"),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    claims = await id_token_claims(collect.http, body["id_token"])
    assert claims["aud"] == client["id"]
    info = await consented(page.http, body["access_token"])
    assert info["sub"] == claims["sub"]
    return claims["sub"], claims, info


async def test_pairwise_subjects_differ_across_sectors_and_agree_across_instances(
    tmp_path: Path, redis_url: str
) -> None:
    fleet = tmp_path / "fleet"
    services = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), *PAIRWISE]
    pair_a, pair_a2, pair_b = PAIRWISE
    async with instances(fleet, redis_url, 3, services=services) as ops:
        one = await ops[0].enrolled("user-1", given_name="Ada")
        two = await ops[0].enrolled("user-2", device_id="phone-2", given_name="Bo")
        subs: dict[tuple[str, str], set[str]] = {}
        for i in range(3):
            page, phone_at, collect = ops[i], ops[(i + 1) % 3], ops[(i + 2) % 3]
            for client in PAIRWISE:
                for device, token_id in ((one, "user-1"), (two, "user-2")):
                    sub, claims, info = await pairwise_login(
                        page, on_instance(device, phone_at.http), collect, client, token_id
                    )
                    assert "tokenId" not in claims["idtoken"] and "tokenId" not in info["idtoken"]
                    assert token_id not in json.dumps([claims, info])
                    subs.setdefault((client["id"], token_id), set()).add(sub)
        # The same on every instance...
        assert all(len(found) == 1 for found in subs.values()), subs
        subject = {key: next(iter(found)) for key, found in subs.items()}
        # ...the same within a sector, different across sectors and users.
        for token_id in ("user-1", "user-2"):
            assert subject[(pair_a["id"], token_id)] == subject[(pair_a2["id"], token_id)]
            assert subject[(pair_a["id"], token_id)] != subject[(pair_b["id"], token_id)]
        assert subject[(pair_a["id"], "user-1")] != subject[(pair_a["id"], "user-2")]
        assert subject[(pair_b["id"], "user-1")] != subject[(pair_b["id"], "user-2")]
        # A public-subject client sees the tokenId.
        login = await code_login(ops[0].http, one, [], token_id="user-1")
        body = (await redeem(ops[1].http, login.code, login.verifier)).json()
        assert (await id_token_claims(ops[1].http, body["id_token"]))["sub"] == "user-1"

    # A new instance started later on the same configuration and secret: the same subjects.
    async with instances(fleet, redis_url, 1, services=services) as (later,):
        phone = on_instance(one, later.http)
        for client in PAIRWISE:
            found, _, _ = await pairwise_login(later, phone, later, client, "user-1")
            assert found == subject[(client["id"], "user-1")]

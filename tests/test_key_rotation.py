"""Signing-key rotation (Y02, Y03) with an injected clock, and an RP that never fails across it."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from conftest import OperatorFactory
from idtoken.client import JwksCache
from idtoken.clock import ManualClock
from idtoken.keys import signing
from idtoken.keys.signing import JWKS_MAX_AGE, SigningKeys, generate, key_states, load_or_create

KEEP = 3600 + JWKS_MAX_AGE


def test_a_new_key_is_published_before_it_signs_and_kept_after_it_retires(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    ring = load_or_create(tmp_path, clock=clock, keep_after_retire=KEEP)
    first = ring.active.kid
    new = generate(tmp_path, activates_at=clock.now() + JWKS_MAX_AGE)
    ring = SigningKeys(tmp_path, clock=clock, keep_after_retire=KEEP)

    # Y02: published at once, but the old key still signs for max-age.
    assert set(ring.kids) == {first, new.kid}
    assert ring.active.kid == first
    clock.advance(JWKS_MAX_AGE - 1)
    assert ring.active.kid == first
    clock.advance(1)
    assert ring.active.kid == new.kid
    # Y03: the retired key stays published until its last token expired plus max-age.
    clock.advance(KEEP - 1)
    assert set(ring.kids) == {first, new.kid}
    clock.advance(1)
    assert ring.kids == [new.kid]
    states = {s.kid: s.state for s in ring.states()}
    assert states == {first: "expired", new.kid: "active"}


def test_tokens_signed_by_a_retired_key_still_verify(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    ring = load_or_create(tmp_path, clock=clock, keep_after_retire=KEEP)
    old_token = ring.sign({"sub": "x"}, typ="JWT")
    generate(tmp_path, activates_at=clock.now() + 10)
    ring = SigningKeys(tmp_path, clock=clock, keep_after_retire=KEEP)
    clock.advance(10 + KEEP + 1)
    assert ring.verify(old_token, typ="JWT")["sub"] == "x"  # credentials outlive the JWKS window


def test_every_instance_computes_the_same_states(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    load_or_create(tmp_path, clock=clock)
    generate(tmp_path, activates_at=clock.now() + 100)
    a = SigningKeys(tmp_path, clock=clock, keep_after_retire=KEEP)
    b = SigningKeys(tmp_path, clock=clock, keep_after_retire=KEEP)
    for step in (0, 99, 1, KEEP):
        clock.advance(step)
        assert a.jwks_body == b.jwks_body and a.jwks_etag == b.jwks_etag
        assert a.active.kid == b.active.kid


def test_a_running_ring_picks_up_a_new_key_file(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    ring = load_or_create(tmp_path, clock=clock)
    new = generate(tmp_path, activates_at=clock.now() + 100)
    ring._next_refresh = 0  # as if signing.REFRESH_SECONDS had passed
    assert new.kid in ring.kids


def test_key_states_are_a_pure_function_of_time(tmp_path: Path) -> None:
    generate(tmp_path, activates_at=100.0)
    generate(tmp_path, activates_at=200.0)
    keys = signing._load_all(tmp_path)
    by_time = {
        t: [s.state for s in key_states(keys, now=t, keep_after_retire=50)]
        for t in (50.0, 150.0, 249.0, 250.0)
    }
    assert by_time == {
        50.0: ["pending", "pending"],
        150.0: ["active", "pending"],
        249.0: ["retired", "active"],
        250.0: ["expired", "active"],
    }


async def test_relying_party_never_fails_across_a_rotation(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(time.time())
    async with make_operator(
        clock=clock, limits={"max_pending_per_token": 100, "pushes_per_token_per_10min": 1000}
    ) as op:
        device = await op.enrolled("user-rot")
        # The RP caches keys and refetches only for an unknown kid (and at most every 30 s).
        jwks = JwksCache(op.http, "/.well-known/jwks.json", cooldown=30, monotonic=clock.now)
        rp = op.rp(jwks=jwks, clock=clock.now)
        kids_seen: set[str] = set()
        keys_dir = op.settings.keys_dir
        ring: SigningKeys = op.app.state.runtime.keys

        async def login() -> None:
            started = await rp.initiate("user-rot")
            # The phone's clock agrees with the operator's (which the test moves).
            body = device.verify_body(
                started.session_id,
                started.auto_password,
                ["identity:name"],
                timestamp=int(clock.now() * 1000),
            )
            resp = await op.http.post("/auth/verify", json=body)
            assert resp.status_code == 200
            message = await rp.wait_result(started, timeout=5)
            claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
            assert claims["sub"] == "user-rot"
            kids_seen.add(json.loads(b64url_decode(message["jwt"].split(".")[0]))["kid"])

        await login()
        generate(keys_dir, activates_at=clock.now() + JWKS_MAX_AGE)
        ring._next_refresh = 0
        for step in (0, JWKS_MAX_AGE / 2, JWKS_MAX_AGE / 2, 60, KEEP):
            clock.advance(step)
            await login()
        assert len(kids_seen) == 2
        assert rp.jwks.fetches <= 2


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))

"""Push-fatigue defences and the token lifecycle: rate, lock, unlock, revoke (P01, O02, E08)."""

from __future__ import annotations

import subprocess
import sys

from conftest import Operator, OperatorFactory

TYPED = {
    "id": "bank",
    "name": "Example Bank",
    "allowed_scopes": ["identity:name"],
    "default_scopes": ["identity:name"],
    "otp_mode": "typed",
}


def cli(op: Operator, *args: str) -> subprocess.CompletedProcess[str]:
    config = op.config.directory / "operator.toml"
    return subprocess.run(
        [sys.executable, "-m", "idtoken", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


async def test_push_rate_per_token_resets_after_a_successful_login(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    limits = {"pushes_per_token_per_10min": 3, "max_pending_per_token": 10}
    async with make_operator(limits=limits) as op:
        device = await op.enrolled("user-f1")
        rp = op.rp()
        started = [await rp.initiate("user-f1") for _ in range(3)]
        refused = await op.http.post(
            "/auth/initiate", json={"tokenId": "user-f1", "serviceId": "shop"}
        )
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 500  # the 10-minute window
        # A successful login proves the user is there: the count starts again.
        first = started[0]
        resp = await device.approve(first.session_id, first.auto_password, ["identity:name"])
        assert resp.status_code == 200
        again = await op.http.post(
            "/auth/initiate", json={"tokenId": "user-f1", "serviceId": "shop"}
        )
        assert again.status_code == 201


async def test_failed_verifications_survive_new_sessions_then_lock_until_unlocked(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    limits = {"max_failed_verifications": 4, "max_pending_per_token": 10}
    async with make_operator(services=[TYPED], limits=limits) as op:
        device = await op.enrolled("user-f2")
        rp = op.rp("bank")
        first = await rp.initiate("user-f2")
        for _ in range(3):  # ends the first session: "Too many attempts"
            resp = await device.approve(first.session_id, wrong(first.auto_password), [])
            assert resp.status_code == 400
        second = await rp.initiate("user-f2")  # a new session does not reset the count
        resp = await device.approve(second.session_id, wrong(second.auto_password), [])
        assert resp.status_code == 400
        locked = await op.http.post(
            "/auth/initiate", json={"tokenId": "user-f2", "serviceId": "bank"}
        )
        assert locked.status_code == 429 and locked.json()["error"] == "too_many_requests"
        shown = cli(op, "tokens", "show", "user-f2")
        assert shown.returncode == 0 and '"failedVerifications": 4' in shown.stdout
        assert cli(op, "tokens", "unlock", "user-f2").returncode == 0
        third = await rp.initiate("user-f2")
        resp = await device.approve(third.session_id, third.auto_password, ["identity:name"])
        assert resp.status_code == 200


async def test_re_enrollment_clears_a_lock(make_operator: OperatorFactory, redis_url: str) -> None:
    limits = {"max_failed_verifications": 1}
    async with make_operator(services=[TYPED], limits=limits) as op:
        device = await op.enrolled("user-f3")
        started = await op.rp("bank").initiate("user-f3")
        resp = await device.approve(started.session_id, wrong(started.auto_password), [])
        assert resp.status_code == 400
        refused = await op.http.post(
            "/auth/initiate", json={"tokenId": "user-f3", "serviceId": "bank"}
        )
        assert refused.status_code == 429
        await op.enrolled("user-f3", device_id="device-2")
        ok = await op.http.post("/auth/initiate", json={"tokenId": "user-f3", "serviceId": "bank"})
        assert ok.status_code == 201


async def test_revoked_token_is_refused_everywhere(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator() as op:
        device = await op.enrolled("user-f4")
        rp = op.rp()
        pending = await rp.initiate("user-f4")
        result = cli(op, "tokens", "revoke", "user-f4")
        assert result.returncode == 0, result.stderr
        listed = cli(op, "tokens", "list")
        assert '"status": "revoked"' in listed.stdout
        # Initiate 403, the pending session ended, approval refused, enrollment 409.
        resp = await op.http.post(
            "/auth/initiate", json={"tokenId": "user-f4", "serviceId": "shop"}
        )
        assert resp.status_code == 403 and resp.json()["error"] == "token_revoked"
        resp = await device.approve(pending.session_id, pending.auto_password, ["identity:name"])
        assert resp.status_code in (401, 409)
        body = op.device("device-9").enroll_body(op.issuer.mint("user-f4"))
        resp = await op.http.post("/enroll", json=body)
        assert resp.status_code == 409 and resp.json()["error"] == "token_revoked"
        assert cli(op, "tokens", "show", "nobody").returncode == 1


async def test_token_commands_need_redis(make_operator: OperatorFactory, redis_url: str) -> None:
    async with make_operator(store="memory") as op:
        result = cli(op, "tokens", "list")
        assert result.returncode == 2 and "redis_url" in result.stderr

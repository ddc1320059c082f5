"""Metrics, probes and logs: what an operator watches, and what must never be in it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import OperatorFactory
from idtoken import logs
from idtoken.app import create_app
from idtoken.logs import JsonFormatter
from idtoken.settings import load_settings, secret_digest
from pushreceiver import PushReceiver
from support import OperatorConfig, b64url, free_port, serve_in_process

METRICS = '\n[metrics]\ntoken = "metrics-token-0123456789"\n'


async def test_metrics_need_the_token_and_count_the_flow(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(extra=METRICS) as op:
        device = await op.enrolled("user-m1")
        rp = op.rp()
        started = await rp.initiate("user-m1")
        resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
        assert resp.status_code == 200
        rejected = await rp.initiate("user-m1")
        assert (await device.reject(rejected.session_id)).status_code == 200

        assert (await op.http.get("/metrics")).status_code == 401
        bad = await op.http.get("/metrics", headers={"Authorization": "Bearer metrics-token-0"})
        assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
        resp = await op.http.get(
            "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}
        )
        assert resp.status_code == 200
        text = resp.text
        assert 'idtoken_sessions_initiated_total{service="shop"} 2.0' in text
        assert 'idtoken_sessions_approved_total{service="shop"} 1.0' in text
        assert 'idtoken_sessions_rejected_total{reason="User rejected",service="shop"} 1.0' in text
        assert "idtoken_decision_seconds_count" in text
        assert "idtoken_open_sockets" in text
        assert (
            'idtoken_enrollments_total{issuer="https://integration.test",outcome="enrolled"} 1.0'
            in text
        )


async def test_metrics_endpoint_is_off_without_a_token(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator() as op:
        resp = await op.http.get("/metrics", headers={"Authorization": "Bearer anything-at-all"})
        assert resp.status_code == 404


async def test_probes(make_operator: OperatorFactory, redis_url: str, tmp_path: Path) -> None:
    async with make_operator() as op:
        assert (await op.http.get("/healthz")).json() == {"status": "ok"}
        assert (await op.http.get("/readyz")).json() == {"status": "ready"}
    cfg = OperatorConfig(tmp_path / "down", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(load_settings(cfg.write()))
    import httpx

    async with serve_in_process(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200
        resp = await http.get("/readyz")
        assert resp.status_code == 503 and resp.json()["status"] == "unavailable"


async def test_logs_never_contain_secrets_or_identity(
    make_operator: OperatorFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "client-secret-for-the-log-test"
    service = {
        "id": "shop",
        "name": "Example Shop",
        "audience": "shop-audience",
        "allowed_scopes": ["identity:name", "identity:email"],
        "client_secret_sha256": secret_digest(secret),
    }
    formatter = JsonFormatter()
    with caplog.at_level(logging.DEBUG):
        async with make_operator(services=[service]) as op, PushReceiver() as receiver:
            disco = (await op.http.get("/.well-known/openid-configuration")).json()
            subscription, _ = receiver.new_subscription(
                application_server_key=disco["push_vapid_public_key"]
            )
            device = op.device()
            token = op.issuer.mint("user-log", given_name="Quetzalcoatl", email="q@example.test")
            enrolled = await device.enroll(token, push_subscription=subscription.to_json())
            rp = op.rp(client_secret=secret)
            secrets_seen: list[str] = [
                secret,
                token,
                enrolled.credential,
                "Quetzalcoatl",
                "q@example.test",
                subscription.p256dh,
                subscription.auth,
                subscription.endpoint,
            ]
            # Attackers' inputs (catalogue J and M rows) are refused without being logged.
            _, payload, _ = token.split(".")
            unsigned = b64url(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."
            refused = await op.http.post("/enroll", json=device.enroll_body(unsigned))
            assert refused.status_code == 401
            started = await rp.initiate("user-log", ["identity:name"])
            secrets_seen += [started.auto_password, started.ws_token, unsigned]
            head, _, sig = enrolled.credential.split(".")
            forged = ".".join((head, b64url(b'{"sub":"user-log","givenName":"Eve"}'), sig))
            bad = device.verify_body(
                started.session_id, started.auto_password, ["identity:name"], credential=forged
            )
            assert (await op.http.post("/auth/verify", json=bad)).status_code == 401
            secrets_seen += [forged, bad["signature"]]
            garbage = '{"sessionId": "' + started.auto_password + '", "otp": ' + "[" * 50
            malformed = await op.http.post(
                "/auth/verify", content=garbage, headers={"content-type": "application/json"}
            )
            assert malformed.status_code == 400
            for attempt in range(3):
                started = await rp.initiate("user-log", ["identity:name", "identity:email"])
                secrets_seen += [started.auto_password, started.ws_token]
                if attempt == 0:
                    resp = await device.approve(
                        started.session_id,
                        "000000" if started.auto_password != "000000" else "111111",
                        [],
                    )
                    assert resp.status_code == 400
                elif attempt == 1:
                    resp = await device.approve(
                        started.session_id, started.auto_password, ["identity:name"]
                    )
                    assert resp.status_code == 200
                    message = await rp.wait_result(started, timeout=5)
                    secrets_seen.append(message["jwt"])
                else:
                    await device.reject(started.session_id, "not_me")
            await receiver.wait_for_requests(3)
            # Some refusals, which log details of their own.
            await op.http.post("/auth/initiate", json={"tokenId": "user-log", "serviceId": "shop"})
            await op.http.post("/enroll", json=device.enroll_body(token))
    # Everything the operator (and its server) logged; the test's own HTTP client is not ours.
    lines = [
        formatter.format(record)
        for record in caplog.records
        if record.name.startswith(("idtoken", "uvicorn"))
    ]
    assert any("session approved" in line for line in lines)
    assert any('"logger": "idtoken.security"' in line for line in lines)
    for line in lines:
        for value in secrets_seen:
            assert value not in line, f"a secret reached the log: {line}"


async def test_metrics_add_up_across_workers(tmp_path: Path, redis_url: str) -> None:
    """`serve --workers 2`: /metrics aggregates every worker's counts (multi-process mode)."""
    import httpx

    from idtoken.client import Device
    from support import OperatorProcess

    cfg = OperatorConfig(tmp_path / "mw", redis_url=redis_url, extra=METRICS)
    proc = OperatorProcess(cfg.write(), args=("--workers", "2"))
    with proc:
        for n in range(4):
            # A new connection each time, so that both workers take some.
            async with httpx.AsyncClient(base_url=proc.url) as http:
                device = Device(http, device_id=f"dev-{n}")
                await device.enroll(cfg.issuers[0].mint(f"user-mw{n}"))
                resp = await http.post(
                    "/auth/initiate", json={"tokenId": f"user-mw{n}", "serviceId": "shop"}
                )
                assert resp.status_code == 201
        async with httpx.AsyncClient(base_url=proc.url) as http:
            text = (
                await http.get(
                    "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}
                )
            ).text
    assert 'idtoken_sessions_initiated_total{service="shop"} 4.0' in text, text
    assert "idtoken_initiate_seconds_count 4.0" in text, text
    assert (
        'idtoken_enrollments_total{issuer="https://integration.test",outcome="enrolled"} 4.0'
        in text
    ), text


# ----------------------------------------------------------------------------- log lines
@pytest.fixture
def configured_logs() -> Iterator[io.StringIO]:
    """The operator's own logging set-up (``logs.configure``), writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("uvicorn.access").disabled)
    logs.configure("INFO")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logs.LineHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.flush()
        root.handlers[:], level, logging.getLogger("uvicorn.access").disabled = saved
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    logging.getLogger().handlers[0].flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_event_writes_the_line_that_logger_info_would(configured_logs: io.StringIO) -> None:
    log = logging.getLogger("idtoken.login")
    fields = {"session_id": "sess_1", "service_id": "shop", "attempts": 2, "otp": "123456"}
    log.info("session initiated", extra=fields)
    logs.event(log, "session initiated", **fields)
    standard, lean = _lines(configured_logs)
    assert standard.pop("ts") and lean.pop("ts")
    assert (
        lean
        == standard
        == {
            "level": "info",
            "logger": "idtoken.login",
            "msg": "session initiated",
            "session_id": "sess_1",
            "service_id": "shop",
            "attempts": 2,
        }
    )  # the OTP is dropped by name on both paths


def test_event_goes_through_logging_when_anything_else_listens(
    configured_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("idtoken.login")
    with caplog.at_level(logging.INFO):  # a second handler on the root: the normal path
        logs.event(log, "session approved", session_id="sess_2")
    assert [(r.getMessage(), r.__dict__["session_id"]) for r in caplog.records] == [
        ("session approved", "sess_2")
    ]
    assert [line["msg"] for line in _lines(configured_logs)] == ["session approved"]
    logging.getLogger().setLevel(logging.WARNING)
    logs.event(log, "session approved", session_id="sess_3")  # INFO is off: nothing at all
    assert len(_lines(configured_logs)) == 1

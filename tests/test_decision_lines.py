"""Every decision has its log line: a fraud report's cascade included."""

from __future__ import annotations

import logging

import pytest

from conftest import OperatorFactory


async def test_not_me_writes_a_line_for_every_session_it_ends(
    make_operator: OperatorFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_operator() as op:
        device = await op.enrolled("user-1")
        rp = op.rp()
        reported = await rp.initiate("user-1", ["identity:name"])
        others = [await rp.initiate("user-1", ["identity:name"]) for _ in range(2)]
        with caplog.at_level(logging.INFO, logger="idtoken"):
            resp = await device.reject(reported.session_id, "not_me")
            assert resp.status_code == 200, resp.text
        lines = [r for r in caplog.records if r.getMessage() == "session rejected"]
        by_session = {r.session_id: r for r in lines}
        assert set(by_session) == {reported.session_id, *(o.session_id for o in others)}
        assert len(lines) == 3
        assert all(r.reason == "Not me" for r in lines)
        assert all(r.service_id == "shop" for r in lines)
        for other in others:
            assert by_session[other.session_id].ended_by == reported.session_id
        assert not hasattr(by_session[reported.session_id], "ended_by")
        frauds = [r for r in caplog.records if r.getMessage().startswith("fraud report")]
        assert len(frauds) == 1

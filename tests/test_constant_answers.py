"""A quiet error's answer is rendered once and handed out as a fresh response every time."""

from __future__ import annotations

from idtoken.api.responses import error_response
from idtoken.errors import AuthorizationPending, InvalidRequest


def test_a_pending_answer_is_the_same_every_time_and_not_shared() -> None:
    first = error_response(AuthorizationPending("the user has not answered yet"))
    first.headers["X-Added"] = "by one caller"
    second = error_response(AuthorizationPending("the user has not answered yet"))
    assert second.status_code == 400
    assert second.body == (
        b'{"error":"authorization_pending","error_description":"the user has not answered yet"}'
    )
    assert "x-added" not in second.headers
    assert second.headers["cache-control"] == "no-store"
    assert second.headers["content-length"] == str(len(second.body))


def test_headers_and_words_are_part_of_the_answer() -> None:
    plain = error_response(AuthorizationPending("not yet"))
    cors = error_response(
        AuthorizationPending("not yet", headers={"Access-Control-Allow-Origin": "*"})
    )
    other = error_response(AuthorizationPending("still not"))
    assert "access-control-allow-origin" not in plain.headers
    assert cors.headers["access-control-allow-origin"] == "*"
    assert b"still not" in other.body and b"still not" not in plain.body


def test_many_kinds_of_quiet_answer_stay_right() -> None:
    for i in range(300):  # more than are kept: the oldest are rendered again
        r = error_response(AuthorizationPending(f"wait {i}"))
        assert r.body.endswith(f'"wait {i}"}}'.encode())


def test_other_errors_are_rendered_each_time() -> None:
    r = error_response(InvalidRequest("code is required"))
    assert r.status_code == 400 and b"invalid_request" in r.body

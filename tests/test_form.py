"""Form and query parameters are read as urllib.parse.parse_qsl reads them."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idtoken.api.form import parse_pairs
from idtoken.errors import InvalidRequest

_CHARS = st.sampled_from([*"ab=&+%;:.-_~ 0123456789ABCDEFéz€", "%3A", "%E2%82%AC", "%2"])


@given(st.lists(_CHARS, max_size=40).map("".join))
def test_parse_pairs_reads_what_parse_qsl_reads(text: str) -> None:
    try:
        expected = [
            (n, v) for n, v in parse_qsl(text, keep_blank_values=True, errors="strict") if v
        ]
    except UnicodeDecodeError:
        with pytest.raises(InvalidRequest):
            parse_pairs(text)
        return
    assert parse_pairs(text) == expected


def test_invalid_utf8_in_an_escape_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        parse_pairs("auth_req_id=%FF")

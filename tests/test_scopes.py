"""The scope catalogue, request validation and the claims released into the JWT (contract §5)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from idtoken.scopes import (
    CLAIM_NAMES,
    COMPOSITES,
    KNOWN_SCOPES,
    SCOPE_PATTERN,
    SUPPORTED_CLAIMS,
    ScopeError,
    canonical_scopes,
    claims_for,
    expand,
    scope_string,
)

TODAY = datetime.date(2026, 11, 22)

MARIO: dict[str, Any] = {
    "givenName": "Mario",
    "familyName": "Casola",
    "dateOfBirth": "1980-05-17",
    "nationality": "ITA",
    "documentNumber": "YA1234567",
    "documentType": "P",
    "documentExpiry": "2031-03-09",
    "trustLevel": 3,
    "email": "mario@example.com",
    "phoneNumber": "+390612345678",
}


def release(*scopes: str, identity: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return claims_for(
        scopes,
        MARIO if identity is None else identity,
        token_id=kwargs.get("token_id", "tok-1"),
        today=kwargs.get("today", TODAY),
    )


def born(date_of_birth: str, today: datetime.date, *scopes: str) -> dict[str, Any]:
    return claims_for(scopes, {"dateOfBirth": date_of_birth}, token_id="t", today=today)


# --- catalogue ---------------------------------------------------------------------------------

PLAIN_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("identity:name", {"givenName": "Mario", "familyName": "Casola"}),
    ("identity:given_name", {"givenName": "Mario"}),
    ("identity:family_name", {"familyName": "Casola"}),
    ("identity:date_of_birth", {"dateOfBirth": "1980-05-17"}),
    ("identity:nationality", {"nationality": "ITA"}),
    (
        "identity:document",
        {"documentNumber": "YA1234567", "documentType": "P", "documentExpiry": "2031-03-09"},
    ),
    ("identity:trust_level", {"trustLevel": 3}),
    ("identity:age_over_18", {"age_over_18": True}),
    ("identity:age_over_21", {"age_over_21": True}),
    ("identity:age_over_25", {"age_over_25": True}),
    ("identity:age_range", {"ageRange": "45-54"}),
    ("identity:is_eu_citizen", {"isEuCitizen": True}),
    ("identity:name_initial", {"nameInitial": "M. C."}),
    ("identity:email", {"email": "mario@example.com"}),
    ("identity:phone", {"phoneNumber": "+390612345678"}),
]


@pytest.mark.parametrize(("scope", "claims"), PLAIN_ROWS, ids=[row[0] for row in PLAIN_ROWS])
def test_each_scope_row_releases_exactly_its_claims(scope: str, claims: dict[str, Any]) -> None:
    assert release(scope) == {"tokenId": "tok-1", **claims}


def test_known_scopes_are_the_table_plus_composites() -> None:
    plain = {row[0] for row in PLAIN_ROWS}
    composites = {"identity:basic", "identity:age_verification", "identity:full"}
    assert plain | composites == KNOWN_SCOPES
    assert set(COMPOSITES) == composites
    assert all(SCOPE_PATTERN.match(scope) for scope in KNOWN_SCOPES)


def test_supported_claims_cover_every_releasable_claim() -> None:
    released: set[str] = set()
    for scope in KNOWN_SCOPES:
        released |= release(scope).keys()
    assert set(SUPPORTED_CLAIMS) == released
    assert len(SUPPORTED_CLAIMS) == len(set(SUPPORTED_CLAIMS))
    assert SUPPORTED_CLAIMS[0] == "tokenId"
    assert {"age_over_18", "ageRange", "isEuCitizen", "nameInitial"} <= set(SUPPORTED_CLAIMS)
    assert set(SUPPORTED_CLAIMS) >= CLAIM_NAMES


def test_claim_names() -> None:
    assert {
        "givenName",
        "familyName",
        "dateOfBirth",
        "nationality",
        "documentNumber",
        "documentType",
        "documentExpiry",
        "trustLevel",
        "email",
        "phoneNumber",
    } == CLAIM_NAMES


# --- composites --------------------------------------------------------------------------------


def test_basic_is_name_plus_trust_level() -> None:
    assert expand(["identity:basic"]) == {"identity:name", "identity:trust_level"}
    assert release("identity:basic") == {
        "tokenId": "tok-1",
        "givenName": "Mario",
        "familyName": "Casola",
        "trustLevel": 3,
    }


def test_age_verification_is_age_over_18_plus_name() -> None:
    assert expand(["identity:age_verification"]) == {"identity:age_over_18", "identity:name"}
    assert release("identity:age_verification") == {
        "tokenId": "tok-1",
        "givenName": "Mario",
        "familyName": "Casola",
        "age_over_18": True,
    }


def test_full_is_name_dob_nationality_document_trust_level() -> None:
    assert expand(["identity:full"]) == {
        "identity:name",
        "identity:date_of_birth",
        "identity:nationality",
        "identity:document",
        "identity:trust_level",
    }
    assert release("identity:full") == {
        "tokenId": "tok-1",
        "givenName": "Mario",
        "familyName": "Casola",
        "dateOfBirth": "1980-05-17",
        "nationality": "ITA",
        "documentNumber": "YA1234567",
        "documentType": "P",
        "documentExpiry": "2031-03-09",
        "trustLevel": 3,
    }


def test_expand_keeps_plain_and_unknown_scopes_and_merges_overlaps() -> None:
    assert expand(["identity:email", "identity:basic", "identity:name", "admin"]) == {
        "identity:email",
        "identity:name",
        "identity:trust_level",
        "admin",
    }
    assert expand([]) == frozenset()


def test_expand_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        expand("identity:name")


# --- the seed example and what must not leak ---------------------------------------------------


def test_seed_example_marie_dupont() -> None:
    marie = {
        "givenName": "Marie",
        "familyName": "Dupont",
        "dateOfBirth": "1990-04-01",
        "nationality": "FRA",
        "documentNumber": "12AB34567",
        "trustLevel": 2,
        "email": "marie@example.fr",
    }
    claims = claims_for(
        ["identity:name", "identity:age_over_18"],
        marie,
        token_id="user-token-id",
        today=datetime.date(2024, 4, 1),
    )
    assert claims == {
        "tokenId": "user-token-id",
        "givenName": "Marie",
        "familyName": "Dupont",
        "age_over_18": True,
    }


@pytest.mark.parametrize(
    "scope",
    [
        "identity:age_over_18",
        "identity:age_over_21",
        "identity:age_over_25",
        "identity:age_range",
        "identity:is_eu_citizen",
        "identity:name_initial",
    ],
)
def test_derived_claim_never_releases_its_source(scope: str) -> None:
    claims = release(scope)
    assert claims.keys().isdisjoint(CLAIM_NAMES)
    assert len(claims) == 2


def test_no_scopes_release_only_the_token_id() -> None:
    assert release() == {"tokenId": "tok-1"}


def test_unknown_scopes_release_nothing() -> None:
    assert release("admin", "identity:name_x", "openid") == {"tokenId": "tok-1"}


def test_missing_source_claims_are_omitted_not_null() -> None:
    every_scope = sorted(KNOWN_SCOPES)
    assert claims_for(every_scope, {}, token_id="t", today=TODAY) == {"tokenId": "t"}
    only_given = claims_for(every_scope, {"givenName": "Ana"}, token_id="t", today=TODAY)
    assert only_given == {"tokenId": "t", "givenName": "Ana", "nameInitial": "A."}
    partial_document = claims_for(
        ["identity:document"],
        {"documentType": "ID", "documentNumber": None},
        token_id="t",
        today=TODAY,
    )
    assert partial_document == {"tokenId": "t", "documentType": "ID"}
    assert None not in release(*every_scope).values()


def test_unusable_values_are_omitted() -> None:
    identity = {"givenName": "", "familyName": 7, "trustLevel": True, "email": None}
    scopes = ["identity:name", "identity:trust_level", "identity:email", "identity:name_initial"]
    assert claims_for(scopes, identity, token_id="t", today=TODAY) == {"tokenId": "t"}
    for level in (0, 4, "2", 2.0):
        assert "trustLevel" not in release("identity:trust_level", identity={"trustLevel": level})


@pytest.mark.parametrize("level", [1, 2, 3])
def test_trust_level_is_an_int(level: int) -> None:
    claims = release("identity:trust_level", identity={"trustLevel": level})
    assert claims["trustLevel"] == level
    assert type(claims["trustLevel"]) is int


def test_claims_are_emitted_in_catalogue_order() -> None:
    forward = release("identity:email", "identity:name", "identity:age_over_18")
    backward = release("identity:age_over_18", "identity:name", "identity:email")
    assert (
        list(forward)
        == list(backward)
        == [
            "tokenId",
            "givenName",
            "familyName",
            "age_over_18",
            "email",
        ]
    )


# --- ages ---------------------------------------------------------------------------------------

AGE_SCOPES = ("identity:age_over_18", "identity:age_over_21", "identity:age_over_25")


@pytest.mark.parametrize("years", [18, 21, 25])
def test_age_threshold_reached_exactly_on_the_birthday(years: int) -> None:
    claim = f"age_over_{years}"
    birthday = datetime.date(2026 - years, 6, 15)
    assert born(birthday.isoformat(), datetime.date(2026, 6, 15), *AGE_SCOPES)[claim] is True
    assert born(birthday.isoformat(), datetime.date(2026, 6, 14), *AGE_SCOPES)[claim] is False


def test_age_thresholds_are_independent() -> None:
    claims = born("2005-01-01", datetime.date(2026, 11, 22), *AGE_SCOPES)  # 21 years old
    assert claims == {
        "tokenId": "t",
        "age_over_18": True,
        "age_over_21": True,
        "age_over_25": False,
    }


def test_february_29_birth_in_common_and_leap_years() -> None:
    # Born 2008-02-29: 18 on 2026-03-01 (2026 has no 29 February), not on 2026-02-28.
    assert born("2008-02-29", datetime.date(2026, 2, 28), *AGE_SCOPES)["age_over_18"] is False
    assert born("2008-02-29", datetime.date(2026, 3, 1), *AGE_SCOPES)["age_over_18"] is True
    # Born 2004-02-29: 21 on 2025-03-01; 2024-02-29 is a real birthday (20th).
    assert born("2004-02-29", datetime.date(2025, 2, 28), *AGE_SCOPES)["age_over_21"] is False
    assert born("2004-02-29", datetime.date(2025, 3, 1), *AGE_SCOPES)["age_over_21"] is True
    # Born 2000-02-29: 2028-02-29 exists and is the 28th birthday; 25 was reached 2025-03-01.
    assert born("2000-02-29", datetime.date(2025, 2, 28), *AGE_SCOPES)["age_over_25"] is False
    assert born("2000-02-29", datetime.date(2025, 3, 1), *AGE_SCOPES)["age_over_25"] is True
    # Born 1960-02-28 vs 1960-02-29: 65 on 2025-02-28 and on 2025-03-01 respectively.
    day_before_march = datetime.date(2025, 2, 28)
    assert born("1960-02-28", day_before_march, "identity:age_range")["ageRange"] == "65+"
    assert born("1960-02-29", day_before_march, "identity:age_range")["ageRange"] == "55-64"
    assert born("1960-02-29", datetime.date(2025, 3, 1), "identity:age_range")["ageRange"] == "65+"


def test_february_29_does_not_exist_in_common_year_births() -> None:
    assert born("2007-02-29", TODAY, *AGE_SCOPES) == {"tokenId": "t"}


@pytest.mark.parametrize(
    ("age", "on_birthday", "day_before"),
    [
        (1, "<18", "<18"),
        (18, "18-24", "<18"),
        (25, "25-34", "18-24"),
        (35, "35-44", "25-34"),
        (45, "45-54", "35-44"),
        (55, "55-64", "45-54"),
        (65, "65+", "55-64"),
        (104, "65+", "65+"),
    ],
)
def test_age_range_boundaries(age: int, on_birthday: str, day_before: str) -> None:
    birthday = datetime.date(2026 - age, 6, 15).isoformat()
    assert born(birthday, datetime.date(2026, 6, 15), "identity:age_range") == {
        "tokenId": "t",
        "ageRange": on_birthday,
    }
    assert born(birthday, datetime.date(2026, 6, 14), "identity:age_range") == {
        "tokenId": "t",
        "ageRange": day_before,
    }


@pytest.mark.parametrize(
    "value",
    [
        "1990-13-01",
        "1990-02-30",
        "17/05/1980",
        "19800517",
        "1980-W20-6",
        "800517",
        "1980-05-17T00:00:00",
        " 1980-05-17",
        "1980-05-17\n",
        "１９８０-05-17",  # full-width digits
        "",
        19800517,
        None,
        ["1980-05-17"],
        datetime.datetime(1980, 5, 17),
        "2030-01-01",  # after today
    ],
)
def test_malformed_date_of_birth_omits_age_claims_without_raising(value: object) -> None:
    scopes = [*AGE_SCOPES, "identity:age_range", "identity:date_of_birth", "identity:name"]
    claims = claims_for(
        scopes, {"dateOfBirth": value, "givenName": "Ana"}, token_id="t", today=TODAY
    )
    assert claims == {"tokenId": "t", "givenName": "Ana"}


def test_date_of_birth_given_as_a_date_object() -> None:
    identity = {"dateOfBirth": datetime.date(1980, 5, 17)}
    claims = claims_for(
        ["identity:date_of_birth", "identity:age_over_25"], identity, token_id="t", today=TODAY
    )
    assert claims == {"tokenId": "t", "dateOfBirth": "1980-05-17", "age_over_25": True}


def test_born_today_is_under_18() -> None:
    assert born(TODAY.isoformat(), TODAY, "identity:age_range", "identity:age_over_18") == {
        "tokenId": "t",
        "age_over_18": False,
        "ageRange": "<18",
    }


# --- EU citizenship -----------------------------------------------------------------------------

EU_27 = [
    "AUT", "BEL", "BGR", "HRV", "CYP", "CZE", "DNK", "EST", "FIN",
    "FRA", "DEU", "GRC", "HUN", "IRL", "ITA", "LVA", "LTU", "LUX",
    "MLT", "NLD", "POL", "PRT", "ROU", "SVK", "SVN", "ESP", "SWE",
]  # fmt: skip


def eu(nationality: object) -> dict[str, Any]:
    return claims_for(
        ["identity:is_eu_citizen"], {"nationality": nationality}, token_id="t", today=TODAY
    )


@pytest.mark.parametrize("code", EU_27)
def test_every_eu_member_state_is_eu(code: str) -> None:
    assert eu(code) == {"tokenId": "t", "isEuCitizen": True}


@pytest.mark.parametrize("code", ["GBR", "CHE", "NOR", "ISL", "LIE", "USA", "TUR", "UKR", "XXX"])
def test_non_members_are_not_eu(code: str) -> None:
    assert eu(code) == {"tokenId": "t", "isEuCitizen": False}


def test_eu_list_has_27_members() -> None:
    assert len(set(EU_27)) == 27


def test_icao_germany_code_and_lower_case_count_as_eu() -> None:
    assert eu("D")["isEuCitizen"] is True
    assert eu("D<<")["isEuCitizen"] is True
    assert eu("fra")["isEuCitizen"] is True


def test_is_eu_citizen_omitted_without_nationality() -> None:
    assert eu(None) == {"tokenId": "t"}
    assert eu("") == {"tokenId": "t"}
    assert eu(250) == {"tokenId": "t"}


# --- name initial -------------------------------------------------------------------------------


def initial(identity: dict[str, Any]) -> object:
    claims = claims_for(["identity:name_initial"], identity, token_id="t", today=TODAY)
    return claims.get("nameInitial")


def test_name_initial_from_both_names() -> None:
    assert initial({"givenName": "Mario", "familyName": "Casola"}) == "M. C."


def test_name_initial_from_one_name() -> None:
    assert initial({"givenName": "Mario"}) == "M."
    assert initial({"familyName": "Casola"}) == "C."
    assert initial({"givenName": "", "familyName": "Casola"}) == "C."


def test_name_initial_is_upper_cased_and_handles_non_ascii() -> None:
    assert initial({"givenName": "élodie", "familyName": "østergaard"}) == "É. Ø."
    assert initial({"givenName": "Ярослава", "familyName": "шевченко"}) == "Я. Ш."
    assert initial({"givenName": "łukasz", "familyName": "ärzte"}) == "Ł. Ä."
    # Decomposed input (e + combining acute) keeps its accent and comes out composed.
    assert initial({"givenName": "e\u0301milie"}) == "\u00c9."
    # MRZ-style upper-case names and leading non-letters.
    assert initial({"givenName": "MARIO", "familyName": "'ABDUL"}) == "M. A."


def test_name_initial_omitted_without_names() -> None:
    assert initial({}) is None
    assert initial({"givenName": "  ", "familyName": "--"}) is None


# --- request validation (catalogue X03 / X04) --------------------------------------------------


def test_canonical_scopes_accepts_a_list() -> None:
    assert canonical_scopes(["identity:name", "identity:age_over_18"]) == (
        "identity:name",
        "identity:age_over_18",
    )
    assert canonical_scopes([]) == ()


def test_duplicates_are_canonicalised_keeping_first_occurrence() -> None:
    value = ["identity:email", "identity:name", "identity:email", "identity:name", "identity:phone"]
    assert canonical_scopes(value) == ("identity:email", "identity:name", "identity:phone")


@pytest.mark.parametrize("scope", ["admin", "openid", "identity:everything", "a" * 64])
def test_unknown_but_well_formed_scopes_pass_syntax_but_are_not_known(scope: str) -> None:
    assert canonical_scopes([scope]) == (scope,)
    assert scope not in KNOWN_SCOPES


def test_admin_is_not_known() -> None:
    assert "admin" not in KNOWN_SCOPES
    assert "*" not in KNOWN_SCOPES


@pytest.mark.parametrize(
    "scope",
    [
        "*",
        "identity:*",
        "IDENTITY:NAME",
        "Identity:name",
        "\u0456dentity:name",  # Cyrillic і
        "identity:nаme",  # Cyrillic а
        "identity:name\u200b",  # zero-width space
        "identity\uff1aname",  # full-width colon
        "",
        " ",
        "identity:name ",
        "identity:name identity:email",
        "identity:name\n",
        "identity:name|otp",
        "|",
        "a" * 65,
        "identity-name",
        "identity.name",
    ],
)
def test_malformed_scopes_raise(scope: str) -> None:
    with pytest.raises(ScopeError):
        canonical_scopes(["identity:name", scope])


@pytest.mark.parametrize(
    "value",
    ["identity:name", "identity:name identity:email", None, 7, {"identity:name": True}],
    ids=["string", "spaced-string", "none", "int", "dict"],
)
def test_non_list_raises(value: object) -> None:
    with pytest.raises(ScopeError):
        canonical_scopes(value)


def test_tuple_is_not_a_json_list() -> None:
    with pytest.raises(ScopeError):
        canonical_scopes(("identity:name",))


@pytest.mark.parametrize("item", [None, 1, True, ["identity:name"], b"identity:name"])
def test_non_string_items_raise(item: object) -> None:
    with pytest.raises(ScopeError):
        canonical_scopes(["identity:name", item])


def test_ten_thousand_scopes_raise() -> None:
    with pytest.raises(ScopeError):
        canonical_scopes(["identity:name"] * 10_000)
    with pytest.raises(ScopeError):
        canonical_scopes([f"s{i}" for i in range(10_000)])


def test_max_count_boundary() -> None:
    assert len(canonical_scopes([f"s{i}" for i in range(32)])) == 32
    with pytest.raises(ScopeError):
        canonical_scopes([f"s{i}" for i in range(33)])
    assert canonical_scopes(["a", "b"], max_count=2) == ("a", "b")
    with pytest.raises(ScopeError):
        canonical_scopes(["a", "b", "c"], max_count=2)


def test_every_known_scope_fits_under_the_default_limit() -> None:
    assert canonical_scopes(sorted(KNOWN_SCOPES)) == tuple(sorted(KNOWN_SCOPES))


def test_error_message_does_not_echo_the_value() -> None:
    hostile = "<script>alert(1)</script>"
    with pytest.raises(ScopeError) as caught:
        canonical_scopes(["identity:name", hostile])
    assert hostile not in str(caught.value)
    assert "scopes[1]" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_scope_pattern_is_anchored_for_match_and_search() -> None:
    assert SCOPE_PATTERN.match("identity:name")
    assert SCOPE_PATTERN.match("identity:name\n") is None
    assert SCOPE_PATTERN.search("x identity:name") is None
    assert SCOPE_PATTERN.fullmatch("a" * 64)
    assert SCOPE_PATTERN.fullmatch("a" * 65) is None


# --- scope string -------------------------------------------------------------------------------


def test_scope_string_keeps_order() -> None:
    assert scope_string(["identity:name", "identity:age_over_18"]) == (
        "identity:name identity:age_over_18"
    )
    assert scope_string(("identity:email", "identity:basic")) == "identity:email identity:basic"
    assert scope_string([]) == ""


def test_scope_string_refuses_malformed_scopes() -> None:
    with pytest.raises(ScopeError):
        scope_string(["identity:name", "a b"])
    with pytest.raises(ScopeError):
        scope_string(["identity:name|x"])
    with pytest.raises(TypeError):
        scope_string("identity:name")

"""The sans-IO core, with no server: dialects, token extraction, RFC 7662 request and verdict, TTL policy."""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote_plus

import pytest

from falcon_oauth import core
from falcon_oauth.core import BadRequest, Dialect, Introspected, Undecided
from tests.conftest import contract

TOKEN = "abc.DEF-123_~+/xyz=="


def parse(body: object, max_length: int = 4096) -> core.PluginRequest:
    return core.parse_plugin_request(body, max_length)


# -- dialects and tokens --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dialect", [
    ("sdk_request_valid.json", Dialect.SDK), ("sdk_request_header_token.json", Dialect.SDK),
    ("host_request_query_token.json", Dialect.HOST), ("host_request_custom_token.json", Dialect.HOST),
])
def test_every_contract_request_yields_its_token_and_dialect(name, dialect):
    request = parse(contract(name, TOKEN))
    assert (request.dialect, request.token, request.problem) == (dialect, TOKEN, None)


def test_host_request_carries_its_request_id_and_path():
    request = parse(contract("host_request_query_token.json", TOKEN))
    assert request.request_id == "6d1f3a52-7c1e-4b8e-a0d4-5e2f9b7c0a11"
    assert (request.method, request.path) == ("GET", "/api/users")


@pytest.mark.parametrize("kind", ["bearer", "Bearer", "BEARER", None])
def test_sdk_credentials_type_is_case_insensitive(kind):
    assert parse({"credentials": {"type": kind, "token": TOKEN}}).token == TOKEN


def test_sdk_non_bearer_credentials_do_not_carry_a_token():
    request = parse({"credentials": {"type": "basic", "token": TOKEN}})
    assert (request.token, request.problem) == (None, core.MISSING_TOKEN)


@pytest.mark.parametrize("header", ["Authorization", "authorization", "AUTHORIZATION"])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_sdk_header_name_and_scheme_are_case_insensitive(header, scheme):
    body = {"context": {"headers": {header: f"{scheme} {TOKEN}"}}, "credentials": {"type": "bearer"}}
    assert parse(body).token == TOKEN


def test_sdk_credentials_token_wins_over_the_header():
    body = {"context": {"headers": {"Authorization": "Bearer other"}}, "credentials": {"token": TOKEN}}
    assert parse(body).token == TOKEN


def test_host_precedence_headers_then_custom_then_query():
    body = {"method": "GET", "uri": "/x", "headers": {"Authorization": "Bearer from-headers"},
            "context": {"plugin_id": "p", "custom": {"token": "from-custom"}},
            "query_params": {"access_token": "from-query"}}
    assert parse(body).token == "from-headers"
    del body["headers"]
    assert parse(body).token == "from-custom"
    body["context"]["custom"] = {"authorization": "bearer from-authorization"}
    assert parse(body).token == "from-authorization"
    body["context"]["custom"] = {}
    assert parse(body).token == "from-query"


def test_host_token_from_the_uri_query_when_query_params_lack_it():
    assert parse({"method": "GET", "uri": f"/a?x=1&access_token={TOKEN.replace('+', '%2B')}"}).token == TOKEN


def test_host_ignores_a_non_bearer_authorization():
    body = {"method": "GET", "uri": "/x", "context": {"custom": {"authorization": "Basic dXNlcjpwYXNz"}}}
    assert parse(body).problem == core.MISSING_TOKEN


@pytest.mark.parametrize("token", ["has space", "new\nline", "nul\x00", "ünïcode", "a=b", "=", "", "x" * 4097])
def test_tokens_outside_b64token_or_too_long_are_invalid(token):
    request = parse({"credentials": {"type": "bearer", "token": token}})
    assert request.token is None
    assert request.problem == (core.MISSING_TOKEN if token == "" else core.INVALID_TOKEN)


def test_token_max_length_is_configurable():
    assert parse({"credentials": {"token": "x" * 100}}, max_length=99).problem == core.INVALID_TOKEN
    assert parse({"credentials": {"token": "x" * 99}}, max_length=99).token == "x" * 99


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"), ("text", "JSON object"), (3, "JSON object"), ({}, "credentials"),
    ({"foo": 1}, "credentials"),
    ({"credentials": "bearer"}, "`credentials`"),
    ({"credentials": {"token": 5}}, "`credentials.token`"),
    ({"credentials": {"type": ["bearer"]}}, "`credentials.type`"),
    ({"credentials": {}, "context": []}, "`context`"),
    ({"credentials": {}, "context": {"headers": {"Authorization": 1}}}, "`context.headers`"),
    ({"method": 1}, "`method`"),
    ({"method": "GET", "query_params": []}, "`query_params`"),
    ({"method": "GET", "query_params": {"access_token": 1}}, "`query_params`"),
    ({"context": {"plugin_id": "p", "custom": {"token": {}}}}, "`context.custom.token`"),
])
def test_wrong_shapes_and_types_are_bad_requests_naming_the_field(body, fragment):
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert fragment in caught.value.message


@pytest.mark.parametrize("raw, code", [
    (b"", "empty_body"), (b"   ", "empty_body"), (b"\xff\xfe{}", "invalid_encoding"), (b"{", "invalid_json"),
    (b"[" * 40 + b"]" * 40, "too_deeply_nested"), (b"[" * 100000 + b"]" * 100000, "too_deeply_nested"),
])
def test_parse_body_names_the_problem(raw, code):
    with pytest.raises(BadRequest) as caught:
        core.parse_body(raw)
    assert caught.value.code == code


# -- the introspection request --------------------------------------------------------------------------

def test_client_secret_basic_form_encodes_id_and_secret_before_base64():
    request = core.introspection_request("https://as/introspect", "my client", "p@ss:word+/= x", "client_secret_basic",
                                         TOKEN)
    assert request.method == "POST" and request.url == "https://as/introspect"
    assert request.form == {"token": TOKEN, "token_type_hint": "access_token"}
    assert request.headers["Accept"] == "application/json"
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic" and ":" not in password
    assert (unquote_plus(user), unquote_plus(password)) == ("my client", "p@ss:word+/= x")


def test_client_secret_post_and_none_put_the_client_in_the_form():
    post = core.introspection_request("u", "id", "secret", "client_secret_post", TOKEN)
    assert post.form["client_id"] == "id" and post.form["client_secret"] == "secret"
    assert "Authorization" not in post.headers
    public = core.introspection_request("u", "id", "secret", "none", TOKEN)
    assert public.form["client_id"] == "id" and "client_secret" not in public.form


# -- the introspection answer ---------------------------------------------------------------------------

def answer(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_active_true_gives_claims_without_active():
    record = core.introspection_result(200, answer(active=True, sub="u", scope="read"))
    assert record == Introspected(True, {"sub": "u", "scope": "read"})


def test_active_false_is_inactive():
    assert core.introspection_result(200, answer(active=False)).reason == core.TOKEN_INACTIVE


@pytest.mark.parametrize("body", [
    answer(active="true"), answer(active=1), answer(sub="u"), b"<html>login</html>", b"", b"[]", b"null",
    answer(active=True, exp="soon"), answer(active=True, exp=True), answer(active=True, sub=7),
    answer(active=True, aud=[1]),
])
def test_untrustworthy_answers_are_undecided(body):
    with pytest.raises(Undecided) as caught:
        core.introspection_result(200, body)
    assert caught.value.code == core.AUTH_SERVER_BAD_RESPONSE


@pytest.mark.parametrize("status, code", [(500, core.AUTH_SERVER_ERROR), (401, core.AUTH_SERVER_ERROR),
                                          (403, core.AUTH_SERVER_ERROR), (503, core.AUTH_SERVER_UNAVAILABLE),
                                          (502, core.AUTH_SERVER_UNAVAILABLE)])
def test_non_200_is_undecided(status, code):
    with pytest.raises(Undecided) as caught:
        core.introspection_result(status, answer(active=True))
    assert caught.value.code == code


@pytest.mark.parametrize("header, seconds", [("30", 30), ("0", 1), ("99999", 300), (None, 5),
                                             ("Wed, 21 Oct 2015 07:28:00 GMT", 5)])
def test_retry_after_is_passed_on_within_bounds(header, seconds):
    with pytest.raises(Undecided) as caught:
        core.introspection_result(503, b"", header)
    assert caught.value.retry_after == seconds


# -- userinfo -------------------------------------------------------------------------------------------

ACTIVE = Introspected(True, {"sub": "u1", "scope": "openid", "exp": 2000})


def test_userinfo_adds_claims_but_never_overrides_protected_ones():
    merged = core.merge_userinfo(ACTIVE, 200, answer(sub="u1", email="e@x", scope="admin", exp=9999), False)
    assert merged.claims == {"sub": "u1", "scope": "openid", "exp": 2000, "email": "e@x"}


def test_userinfo_for_another_subject_rejects():
    merged = core.merge_userinfo(ACTIVE, 200, answer(sub="someone-else"), False)
    assert (merged.active, merged.reason) == (False, core.USERINFO_MISMATCH)


@pytest.mark.parametrize("status", [None, 401, 403, 500, 503])
def test_a_failed_userinfo_leaves_the_introspection_verdict_when_not_required(status):
    assert core.merge_userinfo(ACTIVE, status, b"", False) == ACTIVE


@pytest.mark.parametrize("status", [401, 403])
def test_required_userinfo_refusal_rejects(status):
    assert core.merge_userinfo(ACTIVE, status, b"", True).reason == core.USERINFO_REJECTED


@pytest.mark.parametrize("status, body", [(None, b""), (500, b""), (503, b""), (200, b"not json")])
def test_required_userinfo_failure_is_undecided(status, body):
    with pytest.raises(Undecided):
        core.merge_userinfo(ACTIVE, status, body, True)


# -- the verdict ----------------------------------------------------------------------------------------

def test_decide_checks_exp_and_nbf_with_leeway():
    record = Introspected(True, {"sub": "u", "exp": 1000, "nbf": 900})
    assert core.decide(record, 950, 0).authenticated
    assert core.decide(record, 1001, 0).reason == core.TOKEN_EXPIRED
    assert core.decide(record, 1001, 60).authenticated
    assert core.decide(record, 899, 0).reason == core.TOKEN_NOT_YET_VALID
    assert core.decide(record, 899, 60).authenticated


@pytest.mark.parametrize("claims, user_id", [
    ({"sub": "s", "username": "n", "client_id": "c"}, "s"), ({"username": "n", "client_id": "c"}, "n"),
    ({"client_id": "c"}, "c"), ({}, ""),
])
def test_user_id_is_sub_then_username_then_client_id(claims, user_id):
    assert core.decide(Introspected(True, claims), 0, 0).user_id == user_id


def test_inactive_never_authenticates():
    verdict = core.decide(Introspected(False, {"sub": "u"}, core.TOKEN_INACTIVE), 0, 0)
    assert (verdict.authenticated, verdict.reason, verdict.claims) == (False, core.TOKEN_INACTIVE, {})


# -- cache lifetime -------------------------------------------------------------------------------------

def test_cache_ttl_never_outlives_the_token():
    assert core.cache_ttl(Introspected(True, {"exp": 1100}), 1000, 300, 10) == 100
    assert core.cache_ttl(Introspected(True, {"exp": 5000}), 1000, 300, 10) == 300
    assert core.cache_ttl(Introspected(True, {}), 1000, 300, 10) == 300
    assert core.cache_ttl(Introspected(True, {"exp": 900}), 1000, 300, 10) == 0
    assert core.cache_ttl(Introspected(False, {}, core.TOKEN_INACTIVE), 1000, 300, 10) == 10
    assert core.cache_ttl(Introspected(False, {}, core.TOKEN_INACTIVE), 1000, 300, 0) == 0


def test_records_round_trip_through_json_and_reject_garbage():
    record = Introspected(True, {"sub": "u", "aud": ["a", "b"]})
    assert Introspected.from_json(json.loads(json.dumps(record.to_json()))) == record
    for garbage in ({}, {"active": "yes", "claims": {}}, {"active": True, "claims": []}, [], None):
        with pytest.raises(ValueError):
            Introspected.from_json(garbage)


# -- answers in each dialect ----------------------------------------------------------------------------

def shape(value: object) -> object:
    """The JSON shape of a value: its keys and types, recursively."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


CLAIMS = {"sub": "u-1001", "scope": "openid read", "client_id": "storefront", "exp": 1893456000,
          "iat": 1893452400, "email": "grace@example.test"}


def test_sdk_answers_have_the_contract_shapes():
    ok = core.render_verdict(Dialect.SDK, core.Verdict(True, None, "u-1001", CLAIMS), {"cache": "hit"})
    assert (ok.status, ok.body) == (200, contract("sdk_response_authenticated.json"))
    no = core.render_verdict(Dialect.SDK, core.Verdict(False, core.TOKEN_INACTIVE), {})
    assert (no.status, no.body) == (200, contract("sdk_response_rejected.json"))


def test_host_answers_have_the_contract_shapes():
    claims = {"sub": "u-1001", "scope": "openid read", "client_id": "storefront", "exp": 1893456000,
              "username": "grace", "email": "grace@example.test", "name": "Grace H."}
    ok = core.render_verdict(Dialect.HOST, core.Verdict(True, None, "u-1001", claims), {"cache": "miss"})
    expected = contract("host_response_authenticated.json")
    assert ok.body["identity"] == expected["identity"] and ok.body["metadata"] == expected["metadata"]
    assert shape({k: v for k, v in ok.body.items() if k != "claims"}) == \
        shape({k: v for k, v in expected.items() if k != "claims"})
    no = core.render_verdict(Dialect.HOST, core.Verdict(False, core.TOKEN_INACTIVE), {})
    assert no.body == contract("host_response_rejected.json")


@pytest.mark.parametrize("dialect", list(Dialect))
def test_undecided_answers_are_503_with_retry_after_and_never_authenticated(dialect):
    result = core.render_undecided(dialect, Undecided(core.AUTH_SERVER_UNAVAILABLE, retry_after=7))
    assert result.status == 503 and result.headers == {"Retry-After": "7"}
    if dialect is Dialect.SDK:
        assert result.body == {"success": False, "error": core.AUTH_SERVER_UNAVAILABLE}
    else:
        assert result.body["authenticated"] is False and result.body["identity"] is None
        assert result.body["error_message"] == core.AUTH_SERVER_UNAVAILABLE


def test_purge_body():
    assert core.parse_purge({"all": True}, 4096) is None
    assert core.parse_purge({"token": TOKEN}, 4096) == TOKEN
    for bad in ({}, {"all": False}, {"token": "a b"}, {"token": TOKEN, "all": True}, []):
        with pytest.raises(BadRequest):
            core.parse_purge(bad, 4096)

"""Fuzzing: property-based tests of the core (hypothesis) and schemathesis against the OpenAPI document,
with bounded examples, over both app kinds. Whatever comes in, the answer is a documented one, never a
5xx other than 503, and "authenticated" only when the server said active and every check passed."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis.specs.openapi.checks import ignored_auth

from falcon_oauth import core
from falcon_oauth.app import create_app
from falcon_oauth.core import BadRequest, Policy, Route, Undecided
from tests.fakes import FakeAuthServer, fake_settings

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
                    max_leaves=20)
KEYS = st.sampled_from(["credentials", "context", "method", "uri", "query_params", "headers", "token", "type",
                        "custom", "authorization", "access_token", "plugin_id", "request_id"])
SHAPED = st.recursive(JSON, lambda children: st.dictionaries(KEYS, children, max_size=5), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode()),
                 SHAPED.map(lambda v: json.dumps(v).encode())))
def test_any_body_parses_or_is_one_bad_request(raw):
    try:
        request = core.parse_plugin_request(core.parse_body(raw), 4096)
    except BadRequest as error:
        assert error.status == 400 and error.code and error.message
        return
    assert (request.token is None) == (request.problem is not None)
    if request.token is not None:
        assert len(request.token) <= 4096 and core._B64TOKEN.fullmatch(request.token)


CLAIMS = st.dictionaries(st.sampled_from(["sub", "username", "client_id", "scope", "aud", "iss", "exp", "nbf",
                                          "iat", "token_type", "token_use", "email"]),
                         st.one_of(st.text(max_size=12), st.integers(-10**10, 10**10), st.booleans(), st.none(),
                                   st.lists(st.text(max_size=8), max_size=3)), max_size=8)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.booleans(), st.none(), st.text(max_size=5), st.integers()), CLAIMS,
       st.sampled_from([200, 200, 200, 401, 500, 503]), st.integers(0, 2 * 10**10))
def test_authenticated_only_when_active_true_and_checks_pass(active, claims, status, now):
    body = json.dumps({"active": active, **claims}).encode()
    policy = Policy(required_scopes=("read",), routes=(Route("/admin/**", ("admin",)),), audiences=("api",),
                    issuers=("https://as",))
    try:
        record = core.introspection_result(status, body)
    except Undecided:
        assert status != 200 or active is not True or claims  # only garbage claims make a 200 active undecided
        return
    verdict = core.decide(record, now, 60, policy, "GET", "/admin/x")
    if verdict.authenticated:
        assert status == 200 and active is True
        assert "exp" not in claims or now <= claims["exp"] + 60
        assert "nbf" not in claims or claims["nbf"] <= now + 60
        assert {"read", "admin"} <= set(claims["scope"].split())
        assert claims["iss"] == "https://as"
        assert claims["aud"] == "api" or "api" in claims["aud"]


@settings(max_examples=300, deadline=None)
@given(st.booleans(), CLAIMS, st.integers(0, 2 * 10**10), st.integers(0, 10**6), st.integers(0, 3600))
def test_cache_lifetime_never_outlives_exp(active, claims, now, ttl, negative_ttl):
    try:
        record = core.introspection_result(200, json.dumps({**claims, "active": active}).encode())
    except Undecided:
        assume(False)
    lifetime = core.cache_ttl(record, now, ttl, negative_ttl)
    assert lifetime >= 0
    if record.active and "exp" in claims:
        assert lifetime <= max(claims["exp"] - now, 0)
    if not record.active:
        assert lifetime == negative_ttl


# -- schemathesis against the OpenAPI document ----------------------------------------------------------

def fuzz_app(asgi: bool):
    def answer(request):
        token = request.content.decode()
        import httpx

        if "inactive" in token:
            return httpx.Response(200, json={"active": False})
        if "down" in token:
            return httpx.Response(503)
        return httpx.Response(200, json={"active": True, "sub": "u", "scope": "read"})

    return create_app(fake_settings(PLUGIN_API_KEY="fuzz-key-0123456789"), asgi=asgi, transport=FakeAuthServer(answer))


# The harness sends the plugin's key on every case, so schemathesis' "ignored auth" check (which makes one
# credential invalid) never sees a request without a valid one: tests/test_http.py covers refusals instead.
CHECKS = {"headers": {"X-API-Key": "fuzz-key-0123456789"}, "excluded_checks": [ignored_auth]}

wsgi_schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app(asgi=False))


@wsgi_schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_wsgi(case):
    case.call_and_validate(**CHECKS)


asgi_schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app(asgi=True))


@asgi_schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_asgi(case):
    case.call_and_validate(**CHECKS)

"""Local policy, applied on every request, cached or not: scopes (global and per route), audience,
issuer, token type. Unit tests of the core, recorded answers of other servers, and oidc-provider."""

from __future__ import annotations

import json
import re
from pathlib import Path

import falcon.testing
import pytest

from falcon_oauth import core
from falcon_oauth.app import create_app
from falcon_oauth.core import Introspected, Policy, Route
from falcon_oauth.settings import SettingsError, load_settings
from tests.conftest import contract

NOW = 1_800_000_000


def verdict(claims: dict, policy: Policy, method: str | None = "GET", path: str | None = "/api/x") -> core.Verdict:
    return core.decide(Introspected(True, claims), NOW, 0, policy, method, path)


def test_required_scopes_must_all_be_held():
    policy = Policy(required_scopes=("read", "write"))
    assert verdict({"scope": "read write admin"}, policy).authenticated
    rejected = verdict({"scope": "read"}, policy)
    assert (rejected.reason, rejected.detail) == ("insufficient_scope", {"missing_scopes": ["write"]})
    assert verdict({}, policy).detail == {"missing_scopes": ["read", "write"]}


def test_wildcard_scope():
    policy = Policy(required_scopes=("orders:*",))
    assert verdict({"scope": "orders:read"}, policy).authenticated
    assert not verdict({"scope": "orders"}, policy).authenticated
    assert not verdict({"scope": "ordersX:read"}, policy).authenticated


ROUTES = (Route("/admin/**", ("admin",)),
          Route("/api/orders/*", ("orders:write",), frozenset({"POST", "DELETE"})),
          Route("/api/orders/*", ("orders:read",)))


@pytest.mark.parametrize("method, path, scope, ok", [
    ("GET", "/admin/users/7", "admin", True), ("GET", "/admin/users/7", "read", False),
    ("POST", "/api/orders/1", "orders:write", True), ("POST", "/api/orders/1", "orders:read", False),
    ("GET", "/api/orders/1", "orders:read", True), ("GET", "/api/orders/1", "orders:write", False),
    ("get", "/api/orders/1", "orders:read", True), ("GET", "/api/orders/1/items", "", True),
    ("GET", "/elsewhere", "", True), ("GET", None, "", False), (None, "/elsewhere", "", False),
])
def test_first_matching_route_wins(method, path, scope, ok):
    assert verdict({"scope": scope}, Policy(routes=ROUTES), method, path).authenticated is ok


def test_audience_string_or_list():
    policy = Policy(audiences=("api", "other"))
    assert verdict({"aud": "api"}, policy).authenticated
    assert verdict({"aud": ["x", "other"]}, policy).authenticated
    assert verdict({"aud": "nope"}, policy).reason == "invalid_audience"
    assert verdict({}, policy).reason == "invalid_audience"


def test_issuer_and_token_type():
    assert verdict({"iss": "https://b"}, Policy(issuers=("https://a",))).reason == "invalid_issuer"
    assert verdict({"iss": "https://a"}, Policy(issuers=("https://a",))).authenticated
    for token_type, ok in (("Bearer", True), ("bearer", True), ("access_token", True), ("DPoP", False),
                           ("refresh_token", False)):
        assert verdict({"token_type": token_type}, Policy()).authenticated is ok
    assert verdict({"token_type": "DPoP"}, Policy(token_types=("DPoP",))).authenticated


def test_policy_settings_from_environment_and_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("""
auth_server_url: https://as.test
routes:
  - {path: /admin/**, scopes: [admin]}
  - {path: "/api/orders/*", methods: [post], scopes: "orders:write orders:read"}
""")
    s = load_settings({"CONFIG_FILE": str(config), "OAUTH_CLIENT_SECRET": "x", "REQUIRED_SCOPES": "read  write",
                       "AUDIENCES": "a,b", "ISSUERS": "https://as.test"})
    assert s.policy == Policy(("read", "write"), (Route("/admin/**", ("admin",)),
                                                  Route("/api/orders/*", ("orders:write", "orders:read"),
                                                        frozenset({"POST"}))),
                              ("a", "b"), ("https://as.test",), ("Bearer", "access_token"))
    with pytest.raises(SettingsError):
        load_settings({"AUTH_SERVER_URL": "https://as.test", "OAUTH_CLIENT_SECRET": "x",
                       "ROUTES": '[{"path": "no-slash"}]'})


# -- recorded answers of other authorization servers ----------------------------------------------------

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json"))


def load_fixture(path: Path) -> dict:
    text = path.read_text()
    for sign in ("+", "-"):
        text = re.sub(rf'"NOW\{sign}(\d+)"', lambda m, s=sign: str(NOW + int(m.group(1)) * (1 if s == "+" else -1)),
                      text)
    return json.loads(text)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_other_servers_answers_through_the_core(path):
    fixture = load_fixture(path)
    record = core.introspection_result(200, json.dumps(fixture["answer"]).encode())
    p = fixture["policy"]
    policy = Policy(tuple(p.get("required_scopes", ())), (), tuple(p.get("audiences", ())),
                    tuple(p.get("issuers", ())))
    result = core.decide(record, NOW, 60, policy, "GET", "/api")
    expect = fixture["expect"]
    assert result.authenticated is expect["authenticated"]
    if result.authenticated:
        assert result.user_id == expect["user_id"]
        host = core.render_verdict(core.Dialect.HOST, result, {}).body
        for key in ("username", "email"):
            if key in expect:
                assert host["identity"][key] == expect[key]
    else:
        assert result.reason == expect["reason"]
        if "missing_scopes" in expect:
            assert result.detail["missing_scopes"] == expect["missing_scopes"]


# -- against oidc-provider, over HTTP, both app kinds ---------------------------------------------------

def test_scopes_and_routes_against_oidc_provider(authserver, make_client):
    routes = json.dumps([{"path": "/api/orders/**", "methods": ["POST"], "scopes": ["orders:write"]}])
    client = make_client(authserver.settings(REQUIRED_SCOPES="read", ROUTES=routes))
    reader, writer = authserver.token("read orders:read"), authserver.token("read orders:write")

    def ask(token, method, uri):
        body = {"context": {"method": method, "uri": uri}, "credentials": {"type": "bearer", "token": token}}
        return client.simulate_post("/plugin/authenticate", json=body).json["result"]

    assert ask(reader, "GET", "/api/orders/1")["authenticated"] is True
    assert ask(reader, "POST", "/api/orders/1?x=1")["claims"] == {"error": "insufficient_scope",
                                                                  "missing_scopes": ["orders:write"]}
    assert ask(writer, "POST", "/api/orders/1")["authenticated"] is True
    assert ask(authserver.token("write"), "GET", "/api/x")["claims"]["missing_scopes"] == ["read"]


def test_host_dialect_reports_missing_scopes_in_metadata(authserver, make_client):
    client = make_client(authserver.settings(REQUIRED_SCOPES="admin"))
    body = client.simulate_post("/plugin/authenticate",
                                json=contract("host_request_query_token.json", authserver.token("read"))).json
    assert body["authenticated"] is False and body["error_message"] == "insufficient_scope"
    assert body["metadata"]["missing_scopes"] == ["admin"] and body["claims"] == {} and body["identity"] is None


def test_audience_through_a_resource_indicator(authserver, make_client):
    client = make_client(authserver.settings(AUDIENCES="https://api.example.test"))
    with_audience = authserver.token("read", resource="https://api.example.test")
    without = authserver.token("read")
    sdk = "sdk_request_valid.json"
    assert client.simulate_post("/plugin/authenticate", json=contract(sdk, with_audience)).json["result"][
        "authenticated"] is True
    assert client.simulate_post("/plugin/authenticate", json=contract(sdk, without)).json["result"][
        "claims"] == {"error": "invalid_audience"}


def test_a_policy_change_applies_to_cached_verdicts(standin, memcached, asgi):
    """An instance with a stricter policy, sharing memcached, rejects a verdict the other one cached."""
    env = standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server)
    body = contract("host_request_query_token.json", "good-policy")
    lenient = falcon.testing.TestClient(create_app(load_settings(env), asgi=asgi))
    first = lenient.simulate_post("/plugin/authenticate", json=body).json
    assert first["authenticated"] is True and first["metadata"] == {"cache": "miss"}
    strict = falcon.testing.TestClient(create_app(load_settings(env | {"REQUIRED_SCOPES": "admin"}), asgi=asgi))
    second = strict.simulate_post("/plugin/authenticate", json=body).json
    assert second["metadata"]["cache"] == "hit" and second["authenticated"] is False
    assert second["error_message"] == "insufficient_scope" and standin.calls["good-policy"] == 1

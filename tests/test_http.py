"""The HTTP surface in both app kinds: health, bad input, the plugin's own key. Nothing here may call the
authorization server unless a token is well-formed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import contract
from tests.fakes import FakeAuthServer, fake_settings, sdk_body

API_KEY = "plugin-key-0123456789"
JSON = {"Content-Type": "application/json"}


@pytest.fixture()
def fake() -> FakeAuthServer:
    return FakeAuthServer()


@pytest.fixture()
def client(make_client, fake):
    return make_client(fake_settings(), fake)


def test_health_is_open_and_calls_nothing(make_client, fake):
    client = make_client(fake_settings(PLUGIN_API_KEY=API_KEY), fake)
    result = client.simulate_get("/health")
    assert result.status_code == 200
    assert result.json == {"status": "healthy", "plugin": "auth-python-oauth", "version": "0.1.0"}
    assert fake.calls == 0


@pytest.mark.parametrize("body, code", [
    (b"", "empty_body"), (b"not json", "invalid_json"), (b"\xff\xfe", "invalid_encoding"),
    (b"[]", "invalid_request"), (b"42", "invalid_request"), (b'"x"', "invalid_request"),
    (b"null", "invalid_request"), (b'{"hello": "world"}', "unknown_dialect"),
    (b'{"credentials": {"token": 1}}', "invalid_request"),
    (b'{"method": "GET", "query_params": {"access_token": ["a"]}}', "invalid_request"),
    (b"[" * 5000 + b"]" * 5000, "too_deeply_nested"),
])
def test_bad_bodies_are_400_with_a_json_error_and_no_call_out(client, fake, body, code):
    result = client.simulate_post("/plugin/authenticate", body=body, headers=JSON)
    assert result.status_code == 400
    assert result.json["success"] is False and result.json["error"] == code and result.json["message"]
    assert fake.calls == 0


@pytest.mark.parametrize("limit, size", [("2048", 3000), ("65536", 3 * 1024 * 1024)])
def test_a_body_over_the_limit_is_413(make_client, fake, limit, size):
    client = make_client(fake_settings(MAX_BODY_BYTES=limit), fake)
    body = json.dumps({"credentials": {"token": "a"}, "pad": "x" * size})
    result = client.simulate_post("/plugin/authenticate", body=body, headers=JSON)
    assert result.status_code == 413 and result.json["error"] == "body_too_large"
    assert fake.calls == 0


def test_no_request_field_is_ever_a_url_to_fetch(client, fake):
    body = {"context": {"plugin_id": "p", "custom": {"token": "good"}, "environment": {
        "AUTH_SERVER_URL": "http://attacker.test"}}, "method": "GET", "uri": "http://attacker.test/introspect",
        "headers": {"Host": "attacker.test"}, "query_params": {"introspection_endpoint": "http://attacker.test"}}
    assert client.simulate_post("/plugin/authenticate", json=body).json["authenticated"] is True
    (request,) = fake.requests
    assert str(request.url) == "http://auth.invalid/oauth/introspect"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_non_json_content_type_is_415(client, fake, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    result = client.simulate_post("/plugin/authenticate", body="token=abc", headers=headers)
    assert result.status_code == 415 and result.json["error"] == "unsupported_media_type"
    assert fake.calls == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405(client, method):
    result = client.simulate_request(method, "/plugin/authenticate")
    assert result.status_code == 405 and result.json["error"] == "method_not_allowed"


def test_unknown_path_is_404_json(client):
    result = client.simulate_get("/nope")
    assert result.status_code == 404 and result.json["error"] == "not_found"


@pytest.mark.parametrize("token, reason", [
    (None, "missing_token"), ("a b", "invalid_token"), ("line\nbreak", "invalid_token"), ("nul\x00", "invalid_token"),
    ("tok\u00e9n", "invalid_token"), ("\u202etoken", "invalid_token"), ("x" * 5000, "invalid_token"),
    ("y" * 40_000, "invalid_token"),
], ids=["missing", "space", "newline", "nul", "non-ascii", "bidi", "5k", "40k"])
def test_no_usable_token_is_a_verdict_without_a_call_out(client, fake, token, reason):
    credentials = {"type": "bearer"} if token is None else {"type": "bearer", "token": token}
    result = client.simulate_post("/plugin/authenticate", json={"credentials": credentials})
    assert result.status_code == 200
    assert result.json == {"success": True, "result": {"authenticated": False, "user_id": "",
                                                        "claims": {"error": reason}}}
    host = client.simulate_post("/plugin/authenticate", json={"method": "GET", "uri": "/a", "context": {}})
    assert host.json["authenticated"] is False and host.json["error_message"] == "missing_token"
    assert host.json["identity"] is None and host.json["claims"] == {} and host.json["metadata"] == {}
    assert fake.calls == 0


# -- the plugin's own key -------------------------------------------------------------------------------

@pytest.fixture()
def keyed(make_client, fake):
    return make_client(fake_settings(PLUGIN_API_KEY=API_KEY), fake)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {API_KEY}"}, {"X-API-Key": API_KEY[:-1]}])
def test_without_the_key_plugin_routes_are_401(keyed, fake, headers):
    result = keyed.simulate_post("/plugin/authenticate", body=sdk_body("tok"), headers={**JSON, **headers})
    assert result.status_code == 401 and result.json["error"] == "unauthorized"
    assert API_KEY not in result.text
    assert fake.calls == 0


@pytest.mark.parametrize("headers", [{"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"},
                                     {"Authorization": f"bearer {API_KEY}"}])
def test_with_the_key_plugin_routes_answer(keyed, fake, headers):
    result = keyed.simulate_post("/plugin/authenticate", body=sdk_body("tok"), headers={**JSON, **headers})
    assert result.status_code == 200 and result.json["result"]["authenticated"] is True


def test_in_the_host_dialect_the_authorization_header_is_the_key_never_the_token(keyed, fake):
    body = contract("host_request_query_token.json", "the-users-token")
    result = keyed.simulate_post("/plugin/authenticate", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert result.json["authenticated"] is True
    (request,) = fake.requests
    assert b"token=the-users-token" in request.content and API_KEY.encode() not in request.content


def test_purge_is_404_without_a_key_and_needs_the_key(make_client, fake, keyed):
    unkeyed = make_client(fake_settings(), fake)
    assert unkeyed.simulate_post("/plugin/cache/purge", json={"all": True}).status_code == 404
    assert keyed.simulate_post("/plugin/cache/purge", json={"all": True}).status_code == 401
    result = keyed.simulate_post("/plugin/cache/purge", json={"all": True}, headers={"X-API-Key": API_KEY})
    assert result.status_code == 200 and result.json == {"purged": "all"}

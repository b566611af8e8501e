"""The plugin against a real authorization server (oidc-provider), in both app kinds and both dialects."""

from __future__ import annotations

import time

import pytest

from tests.conftest import POST_CLIENT, contract


def sdk(client, token: str):
    return client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", token))


def host(client, token: str):
    return client.simulate_post("/plugin/authenticate", json=contract("host_request_query_token.json", token))


def test_client_credentials_token_is_accepted_with_its_scope(authserver, make_client):
    client = make_client(authserver.settings())
    token = authserver.token("read write")
    result = sdk(client, token)
    assert result.status_code == 200
    assert result.json["success"] is True
    verdict = result.json["result"]
    assert verdict["authenticated"] is True and verdict["user_id"] == "app"
    assert verdict["claims"]["scope"] == "read write" and verdict["claims"]["client_id"] == "app"
    assert "active" not in verdict["claims"]


def test_host_dialect_answer_is_strictly_typed(authserver, make_client):
    client = make_client(authserver.settings())
    for request in ("host_request_query_token.json", "host_request_custom_token.json"):
        result = client.simulate_post("/plugin/authenticate", json=contract(request, authserver.token()))
        body = result.json
        assert result.status_code == 200 and body["authenticated"] is True
        assert set(body) == set(contract("host_response_authenticated.json"))
        assert set(body["identity"]) == set(contract("host_response_authenticated.json")["identity"])
        assert body["identity"]["user_id"] == "app"
        assert isinstance(body["identity"]["roles"], list) and isinstance(body["identity"]["attributes"], dict)
        assert isinstance(body["claims"], dict) and body["metadata"] == {"cache": "miss"}
        assert body["error_message"] is None


def test_a_revoked_token_is_rejected(authserver, make_client):
    client = make_client(authserver.settings())
    token = authserver.token()
    authserver.revoke(token)
    assert sdk(client, token).json == contract("sdk_response_rejected.json")
    assert host(client, token).json == contract("host_response_rejected.json") | {"metadata": {"cache": "hit"}}


def test_a_garbage_token_is_rejected(authserver, make_client):
    client = make_client(authserver.settings())
    result = sdk(client, "not-a-token-this-server-issued")
    assert result.status_code == 200 and result.json == contract("sdk_response_rejected.json")


def test_a_short_lived_token_is_rejected_after_it_expires(authserver, make_client):
    client = make_client(authserver.settings(CLOCK_SKEW_SECONDS="0"))
    token = authserver.token("read short")  # the server gives scope "short" a 2-second life
    assert sdk(client, token).json["result"]["authenticated"] is True
    time.sleep(3.2)
    verdict = sdk(client, token).json["result"]  # the cached verdict must not outlive the token either
    assert verdict["authenticated"] is False
    assert verdict["claims"]["error"] in ("token_expired", "token_inactive")


def test_user_token_with_userinfo_carries_the_userinfo_claims(authserver, make_client):
    client = make_client(authserver.settings(USERINFO_ENDPOINT="/me"))
    result = host(client, authserver.user_token("user-42"))
    body = result.json
    assert body["authenticated"] is True
    assert body["identity"]["user_id"] == "user-42"
    assert body["identity"]["email"] == "ada@example.test"
    assert body["identity"]["username"] == "ada" and body["identity"]["display_name"] == "Ada L."
    assert body["claims"]["sub"] == "user-42" and body["claims"]["email_verified"] is True


def test_a_machine_token_survives_userinfo_refusing_it(authserver, make_client):
    client = make_client(authserver.settings(USERINFO_ENDPOINT="/me"))
    verdict = sdk(client, authserver.token()).json["result"]
    assert verdict["authenticated"] is True and "email" not in verdict["claims"]


def test_required_userinfo_rejects_a_token_userinfo_refuses(authserver, make_client):
    client = make_client(authserver.settings(USERINFO_ENDPOINT="/me", USERINFO_REQUIRED="true"))
    verdict = sdk(client, authserver.token()).json["result"]
    assert verdict == {"authenticated": False, "user_id": "", "claims": {"error": "userinfo_rejected"}}


def test_client_secret_post(authserver, make_client):
    settings = authserver.settings(OAUTH_CLIENT_ID=POST_CLIENT[0], OAUTH_CLIENT_SECRET=POST_CLIENT[1],
                                   CLIENT_AUTH_METHOD="client_secret_post")
    assert sdk(make_client(settings), authserver.token()).json["result"]["authenticated"] is True


@pytest.mark.parametrize("secret", ["wrong", "p@ss:word+/= with spacE"])
def test_wrong_client_credentials_are_undecided_not_rejected(authserver, make_client, secret):
    client = make_client(authserver.settings(OAUTH_CLIENT_SECRET=secret))
    result = sdk(client, authserver.token())
    assert result.status_code == 503
    assert result.json == {"success": False, "error": "auth_server_error"}
    assert result.headers["Retry-After"].isdigit()


def test_the_audience_of_a_resource_indicator_reaches_the_claims(authserver, make_client):
    client = make_client(authserver.settings())
    token = authserver.token("read", resource="https://api.example.test")
    assert sdk(client, token).json["result"]["claims"]["aud"] == "https://api.example.test"


def test_readiness_follows_the_authorization_server(authserver, make_client):
    ready = make_client(authserver.settings()).simulate_get("/health/ready")
    assert ready.status_code == 200 and ready.json["auth_server"] == "ok"
    wrong = make_client(authserver.settings(OAUTH_CLIENT_SECRET="wrong")).simulate_get("/health/ready")
    assert wrong.status_code == 503 and wrong.json["auth_server"] == "auth_server_error"

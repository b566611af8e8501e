"""Finding endpoints by discovery, and pre-authorization (the plugin's own client_credentials token for
introspection endpoints that demand a bearer token)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import pytest

from falcon_oauth import core
from falcon_oauth.discovery import discover_at_start
from falcon_oauth.settings import SettingsError, load_settings
from tests.conftest import APP_CLIENT, PLUGIN_CLIENT, ROOT, JsonHandler, contract, free_port


def test_discovery_urls_insert_the_issuer_path_as_rfc_8414_says():
    assert core.discovery_urls("https://as.test/tenant/1") == [
        "https://as.test/.well-known/oauth-authorization-server/tenant/1",
        "https://as.test/tenant/1/.well-known/openid-configuration"]
    assert core.discovery_urls("https://as.test/") == [
        "https://as.test/.well-known/oauth-authorization-server",
        "https://as.test/.well-known/openid-configuration"]


def test_metadata_of_another_issuer_is_ignored():
    body = json.dumps({"issuer": "https://evil.test", "introspection_endpoint": "https://evil.test/i"}).encode()
    assert core.endpoints_from_metadata(200, body, "https://as.test") is None
    good = json.dumps({"issuer": "https://as.test/", "introspection_endpoint": "https://as.test/i",
                       "userinfo_endpoint": "javascript:alert(1)"}).encode()
    assert core.endpoints_from_metadata(200, good, "https://as.test") == {"introspection_endpoint": "https://as.test/i"}


def test_discovery_against_oidc_provider_finds_the_endpoints(authserver, make_client):
    env = authserver.environ(OIDC_DISCOVERY="true")
    del env["INTROSPECTION_ENDPOINT"]
    settings = discover_at_start(load_settings(env))
    assert settings.introspection_url == f"{authserver.url}/token/introspection"
    assert settings.userinfo_url == f"{authserver.url}/me"
    assert settings.token_url == f"{authserver.url}/token"
    result = make_client(settings).simulate_post(
        "/plugin/authenticate", json=contract("host_request_query_token.json", authserver.user_token()))
    assert result.json["authenticated"] is True and result.json["identity"]["email"] == "ada@example.test"


def test_explicit_endpoints_win_over_discovered_ones(authserver):
    env = authserver.environ(OIDC_DISCOVERY="true", USERINFO_ENDPOINT="/custom-userinfo")
    settings = discover_at_start(load_settings(env))
    assert settings.introspection_url == f"{authserver.url}/token/introspection"
    assert settings.userinfo_url == f"{authserver.url}/custom-userinfo"


@pytest.mark.integration
def test_failed_discovery_stops_start_up_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "AUTH_SERVER_URL": f"http://127.0.0.1:{free_port()}",
           "OAUTH_CLIENT_SECRET": "s", "OIDC_DISCOVERY": "true", "AUTH_SERVER_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-m", "falcon_oauth"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("falcon-oauth: configuration error: OIDC_DISCOVERY: no usable metadata")


def test_failed_discovery_with_an_explicit_endpoint_goes_on():
    settings = load_settings({"AUTH_SERVER_URL": f"http://127.0.0.1:{free_port()}", "OAUTH_CLIENT_SECRET": "s",
                              "OIDC_DISCOVERY": "true", "INTROSPECTION_ENDPOINT": "/introspect",
                              "AUTH_SERVER_TIMEOUT": "1"})
    assert discover_at_start(settings) == settings


# -- pre-authorization ----------------------------------------------------------------------------------

class Gateway:
    """A resource-server gateway in front of oidc-provider's introspection that demands a bearer token of
    the plugin's client (checked at oidc-provider), as some deployments do. It can refuse a good token
    once, as a server does after rotating its keys."""

    def __init__(self, authserver) -> None:
        self.bearers: list[str] = []
        self.refuse_next = False
        gateway = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                form = self.form()
                scheme, _, bearer = (self.headers.get("Authorization") or "").partition(" ")
                gateway.bearers.append(bearer)
                check = authserver.http.post("/token/introspection", data={"token": bearer}, auth=APP_CLIENT).json()
                if scheme != "Bearer" or not check.get("active") or check.get("client_id") != PLUGIN_CLIENT[0] \
                        or gateway.refuse_next:
                    gateway.refuse_next = False
                    self.answer(401, b'{"error": "invalid_token"}')
                    return
                answer = authserver.http.post("/token/introspection", content=form, auth=APP_CLIENT,
                                              headers={"Content-Type": "application/x-www-form-urlencoded"})
                self.answer(answer.status_code, answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/introspect"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def gateway(authserver):
    gateway = Gateway(authserver)
    yield gateway
    gateway.server.shutdown()
    gateway.server.server_close()


def test_pre_authorization_token_is_obtained_once_reused_and_renewed_on_401(authserver, gateway, make_client):
    settings = authserver.settings(CLIENT_AUTH_METHOD="bearer", TOKEN_ENDPOINT="/token", TOKEN_SCOPE="read",
                                   INTROSPECTION_ENDPOINT=gateway.url)
    client = make_client(settings)

    def ask(token):
        return client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", token)).json

    for _ in range(3):
        assert ask(authserver.token())["result"]["authenticated"] is True
    assert len(gateway.bearers) == 3 and len(set(gateway.bearers)) == 1  # one token, reused
    gateway.refuse_next = True
    assert ask(authserver.token())["result"]["authenticated"] is True  # 401 → a new token, asked again
    assert len(set(gateway.bearers)) == 2


def test_pre_authorization_with_a_wrong_secret_cannot_decide(authserver, gateway, make_client):
    settings = authserver.settings(CLIENT_AUTH_METHOD="bearer", TOKEN_ENDPOINT="/token",
                                   INTROSPECTION_ENDPOINT=gateway.url, OAUTH_CLIENT_SECRET="wrong")
    result = make_client(settings).simulate_post("/plugin/authenticate",
                                                 json=contract("sdk_request_valid.json", authserver.token()))
    assert result.status_code == 503 and result.json["error"] == "auth_server_error"
    assert gateway.bearers == []


def test_bearer_needs_a_token_endpoint():
    with pytest.raises(SettingsError, match="TOKEN_ENDPOINT"):
        load_settings({"AUTH_SERVER_URL": "https://as.test", "OAUTH_CLIENT_SECRET": "s",
                       "CLIENT_AUTH_METHOD": "bearer"})


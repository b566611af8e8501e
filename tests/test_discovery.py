"""Finding endpoints by discovery, and pre-authorization (the plugin's own client_credentials token for
introspection endpoints that demand a bearer token)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from falcon_oauth import core
from falcon_oauth.discovery import discover, discover_at_start
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
    assert core.endpoints_from_metadata(200, good, "https://as.test") == core.Metadata(
        {"introspection_endpoint": "https://as.test/i"}, {"userinfo_endpoint": "not an http(s) URL"})


def test_an_https_issuer_never_gets_a_plain_http_endpoint():
    body = json.dumps({"issuer": "https://as.test", "introspection_endpoint": "http://as.test/i",
                       "userinfo_endpoint": "HTTP://as.test/me", "token_endpoint": "https://as.test/token"}).encode()
    assert core.endpoints_from_metadata(200, body, "https://as.test") == core.Metadata(
        {"token_endpoint": "https://as.test/token"},
        dict.fromkeys(["introspection_endpoint", "userinfo_endpoint"], "plain http for an https issuer"))
    # an http issuer (a development server on loopback) may name http endpoints
    body = json.dumps({"issuer": "http://127.0.0.1:9400", "introspection_endpoint": "http://127.0.0.1:9400/i"}).encode()
    assert core.endpoints_from_metadata(200, body, "http://127.0.0.1:9400").endpoints == {
        "introspection_endpoint": "http://127.0.0.1:9400/i"}


def test_endpoints_on_another_host_are_accepted_over_https():
    """RFC 8414 allows them and large providers use them (userinfo and token on hosts of their own); the
    metadata comes from the issuer itself over verified TLS, and the issuer decides every verdict anyway."""
    body = json.dumps({"issuer": "https://accounts.example.test",
                       "userinfo_endpoint": "https://userinfo.example.test/v1/userinfo"}).encode()
    assert core.endpoints_from_metadata(200, body, "https://accounts.example.test").endpoints == {
        "userinfo_endpoint": "https://userinfo.example.test/v1/userinfo"}


@pytest.mark.parametrize("value", [
    "https://user:pw@as.test/i", "https://user@as.test/i",  # credentials: sent by no one, logged by no one
    "https://[::1/i", "https://as.test:99999/i", "https://as.test:0/i", "https:///i", "/relative/i", "",
    "https://as.test/i\r\nX-Injected: 1", "https://as.test/i\tx", " https://as.test/i", "https://as.test/ i",
    42, ["https://as.test/i"], {"url": "https://as.test/i"}, True,
])
def test_an_endpoint_that_is_not_a_plain_absolute_url_is_refused(value):
    body = json.dumps({"issuer": "https://as.test", "introspection_endpoint": value}).encode()
    metadata = core.endpoints_from_metadata(200, body, "https://as.test")
    assert metadata.endpoints == {} and "introspection_endpoint" in metadata.refused


URL_PARTS = st.sampled_from(["https", "http", "HTTPS", "HtTp", ":", "//", "/", "\\", "@", "as.test", "evil.test",
                             ":443", ":80", "[", "]", "::1", "?", "#", "%2f", "%40", " ", "\t", "\n", "\x00",
                             "user", "é", "xn--", "."])


@given(st.lists(URL_PARTS | st.text(max_size=4), max_size=10).map("".join))
@example("https:\\evil.test")
@example("https://as.test\\@evil.test/")
@example("http\n://evil.test")
@example("HTTPS://evil.test:443/%2f")
@settings(max_examples=500)
def test_no_spelling_of_an_endpoint_gets_an_https_issuer_to_talk_plain_http(value):
    """Checked against httpx's own URL parser, which is what sends the request: whatever urlsplit made of
    the text, an endpoint accepted for an https issuer is https with no credentials for httpx too."""
    body = json.dumps({"issuer": "https://as.test", "introspection_endpoint": value}).encode()
    accepted = core.endpoints_from_metadata(200, body, "https://as.test").endpoints.get("introspection_endpoint")
    if accepted is not None:
        url = httpx.URL(accepted)
        assert url.scheme == "https" and url.host and not url.userinfo


class MetadataServer:
    """A loopback issuer whose RFC 8414 document a test can change between reads."""

    def __init__(self) -> None:
        self.document: dict = {}
        owner = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802
                found = self.path == "/.well-known/oauth-authorization-server"
                self.answer(200 if found else 404, json.dumps(owner.document if found else {}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settings(self, **extra: str):
        return load_settings({"AUTH_SERVER_URL": self.url, "OAUTH_CLIENT_SECRET": "s", "OIDC_DISCOVERY": "true",
                              **extra})


@pytest.fixture()
def issuer():
    server = MetadataServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_the_endpoints_in_use_are_logged_once_at_start_and_again_when_they_change(issuer, caplog):
    caplog.set_level(logging.INFO, logger="falcon_oauth.discovery")
    issuer.document = {"issuer": issuer.url, "introspection_endpoint": f"{issuer.url}/introspect?tenant=1",
                       "token_endpoint": "https://client:hunter2@idp.test/token"}
    settings = discover_at_start(issuer.settings())
    assert settings.introspection_url == f"{issuer.url}/introspect?tenant=1" and settings.token_url is None
    discover(issuer.settings())  # a refresh that finds the same: nothing new to say
    (first,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert first.endpoints == {"introspection": f"{issuer.url}/introspect", "userinfo": "none", "token": "none",
                               "jwks": "none"}
    (refusal,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "token_endpoint" in refusal.getMessage() and "credentials in the URL" in refusal.getMessage()
    assert "hunter2" not in caplog.text and "tenant" not in caplog.text  # no credentials, no query

    issuer.document["introspection_endpoint"] = f"{issuer.url}/v2/introspect"
    issuer.document["userinfo_endpoint"] = f"{issuer.url}/me"
    assert discover(issuer.settings()).userinfo_url == f"{issuer.url}/me"
    second = [r for r in caplog.records if r.levelno == logging.INFO][1]
    assert second.endpoints == {"introspection": f"{issuer.url}/v2/introspect", "userinfo": f"{issuer.url}/me",
                                "token": "none", "jwks": "none"}


def test_metadata_without_a_usable_introspection_endpoint_never_falls_back_to_the_default_path(issuer):
    """At start that stops the service; on a refresh the drivers keep the endpoints they know."""
    issuer.document = {"issuer": issuer.url, "introspection_endpoint": f"http://user:pw@{issuer.url[7:]}/i",
                       "userinfo_endpoint": f"{issuer.url}/me"}
    with pytest.raises(SettingsError, match="no usable introspection_endpoint .credentials in the URL."):
        discover_at_start(issuer.settings())
    with pytest.raises(SettingsError):
        discover(issuer.settings())
    explicit = issuer.settings(INTROSPECTION_ENDPOINT="/mine")
    assert discover(explicit).introspection_url == f"{issuer.url}/mine"  # the operator's, plus userinfo
    assert discover(explicit).userinfo_url == f"{issuer.url}/me"


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


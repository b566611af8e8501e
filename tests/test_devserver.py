"""The development authorization server and the demo: what a newcomer runs first."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import falcon.testing
import httpx
import pytest
import yaml

from falcon_oauth.devserver import DEV_CLIENT, JWT_AUDIENCE, DevAuthServer, start_devserver
from falcon_oauth.settings import load_settings
from tests.conftest import ROOT, free_port, stop

CLIENT = DEV_CLIENT


@pytest.fixture()
def devserver():
    config = yaml.safe_load((ROOT / "config" / "devserver.example.yaml").read_text())
    url, server = start_devserver(config)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    server.shutdown()


def introspect(client, token, auth=CLIENT):
    return client.post("/introspect", data={"token": token}, auth=auth)


def test_introspection_per_rfc_7662(devserver):
    user = introspect(devserver, "demo-user-token").json()
    assert user["active"] is True and user["sub"] == "user-42" and user["exp"] > time.time()
    for token in ("demo-inactive-token", "demo-expired-token", "unknown"):
        assert introspect(devserver, token).json() == {"active": False}
    assert introspect(devserver, "demo-user-token", auth=("mockforge", "wrong")).status_code == 401


def test_client_credentials_revocation_userinfo_and_metadata(devserver):
    issued = devserver.post("/token", data={"grant_type": "client_credentials", "scope": "read"},
                            auth=("demo-app", "demo-app-secret")).json()
    assert introspect(devserver, issued["access_token"]).json()["scope"] == "read"
    devserver.post("/revoke", data={"token": issued["access_token"]}, auth=("demo-app", "demo-app-secret"))
    assert introspect(devserver, issued["access_token"]).json() == {"active": False}
    me = devserver.get("/userinfo", headers={"Authorization": "Bearer demo-user-token"})
    assert me.json()["email"] == "ada@example.test"
    assert devserver.get("/userinfo", headers={"Authorization": "Bearer demo-machine-token"}).status_code == 401
    metadata = devserver.get("/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == str(devserver.base_url).rstrip("/")
    assert metadata["introspection_endpoint"].endswith("/introspect")
    assert devserver.get(metadata["jwks_uri"]).json()["keys"][0]["kty"] == "RSA"


def test_jwt_access_tokens_for_its_resource_verify_with_its_jwks(devserver):
    from falcon_oauth import jwt

    issued = devserver.post("/token", data={"grant_type": "client_credentials", "scope": "read",
                                            "resource": JWT_AUDIENCE}, auth=("demo-app", "demo-app-secret")).json()
    keys = jwt.KeySet.from_jwks(devserver.get("/jwks").content)
    issuer = str(devserver.base_url).rstrip("/")
    policy = jwt.JwtPolicy(jwt.DEFAULT_ALGORITHMS, True, (issuer,), (JWT_AUDIENCE,), 0)
    record = jwt.verify(issued["access_token"], keys, policy, time.time())
    assert record.active and record.claims["client_id"] == "demo-app" and record.claims["scope"] == "read"
    refused = devserver.post("/token", data={"grant_type": "client_credentials", "resource": "https://other.test"},
                             auth=("demo-app", "demo-app-secret"))
    assert refused.status_code == 400


def test_faults_per_token_and_for_every_call(devserver):
    assert introspect(devserver, "demo-broken-token").status_code == 503
    assert introspect(devserver, "demo-garbage-token").headers["Content-Type"].startswith("text/html")
    started = time.monotonic()
    assert introspect(devserver, "demo-slow-token").json()["active"] is True
    assert time.monotonic() - started >= 2
    devserver.post("/admin/faults", json={"status": 502})
    assert introspect(devserver, "demo-user-token").status_code == 502
    devserver.post("/admin/faults", json={})
    assert introspect(devserver, "demo-user-token").status_code == 200


def test_introspection_at_the_plugins_default_path_too(devserver):
    assert devserver.post("/oauth/introspect", data={"token": "demo-user-token"}, auth=CLIENT).json()["active"]


def test_a_plugin_given_only_the_address_and_the_secret_works(make_client):
    """Out of the box: no INTROSPECTION_ENDPOINT, no OAUTH_CLIENT_ID, the plugin's defaults."""
    url, server = start_devserver()
    try:
        client = make_client(load_settings({"AUTH_SERVER_URL": url, "OAUTH_CLIENT_SECRET": DEV_CLIENT[1]}))
        body = {"credentials": {"type": "bearer", "token": "demo-user-token"}}
        answer = client.simulate_post("/plugin/authenticate", json=body)
    finally:
        server.shutdown()
    assert answer.status_code == 200 and answer.json["result"]["authenticated"] is True


def test_a_404_from_the_server_is_logged_with_a_hint_at_the_setting(make_client, caplog):
    url, server = start_devserver()
    try:
        client = make_client(load_settings({"AUTH_SERVER_URL": url, "OAUTH_CLIENT_SECRET": DEV_CLIENT[1],
                                            "INTROSPECTION_ENDPOINT": "/oauth2/introspection"}))
        with caplog.at_level(logging.INFO, logger="falcon_oauth"):
            answer = client.simulate_post("/plugin/authenticate",
                                          json={"credentials": {"type": "bearer", "token": "demo-user-token"}})
    finally:
        server.shutdown()
    assert answer.status_code == 503 and answer.json["error"] == "auth_server_error"
    (decision,) = [r.decision for r in caplog.records if getattr(r, "decision", None)]
    assert decision["detail"] == "introspection status 404: check INTROSPECTION_ENDPOINT"


@pytest.mark.parametrize("address, headers", [
    ("192.0.2.10", {}), ("10.0.0.1", {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}),
    ("::ffff:192.0.2.10", {}), ("2001:db8::1", {}), ("localhost", {}),
])
def test_faults_can_be_switched_from_loopback_only(address, headers):
    dev = DevAuthServer()
    client = falcon.testing.TestClient(dev.app())
    answer = client.simulate_post("/admin/faults", json={"status": 503}, remote_addr=address, headers=headers)
    assert answer.status_code == 403 and dev.faults == {}
    for loopback in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert client.simulate_post("/admin/faults", json={"status": 503}, remote_addr=loopback).status_code == 200
        assert dev.faults == {"status": 503}
        dev.faults = {}


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (where a wide bind would answer), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def assert_loopback_only(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    address = non_loopback_address()
    if address is not None:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=5).close()


def read_until(process: subprocess.Popen, last: str, timeout: float = 30) -> list[str]:
    """The lines a process prints, up to one starting with ``last``."""
    deadline, lines = time.monotonic() + timeout, []
    while not (lines and lines[-1].startswith(last)):
        line = process.stdout.readline()
        assert line and time.monotonic() < deadline, f"no line starting with {last!r} in {lines}"
        lines.append(line.rstrip("\n"))
    return lines


@pytest.mark.integration
def test_the_devserver_banner_says_how_to_run_the_plugin_against_it(make_client):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "falcon_oauth", "devserver"], cwd=ROOT,
                               env={**os.environ, "DEVSERVER_PORT": str(port)}, stdout=subprocess.PIPE, text=True)
    try:
        banner = read_until(process, "  AUTH_SERVER_URL=")
        assert_loopback_only(port)
        environ = dict(part.split("=", 1) for part in banner[-1].split() if "=" in part)
        assert environ == {"AUTH_SERVER_URL": f"http://127.0.0.1:{port}", "OAUTH_CLIENT_ID": DEV_CLIENT[0],
                           "OAUTH_CLIENT_SECRET": DEV_CLIENT[1]}
        client = make_client(load_settings(environ))
        body = {"credentials": {"type": "bearer", "token": "demo-machine-token"}}
        assert client.simulate_post("/plugin/authenticate", json=body).json["result"]["authenticated"] is True
    finally:
        stop(process)


@pytest.mark.integration
@pytest.mark.parametrize("content, says", [
    (None, "cannot read"), ("clients: [unclosed", "is not valid YAML"), ("- a list", "must hold a list of clients"),
    ("clients: [{client_id: x}]", "must hold a list of clients"), ("tokens: [{token: t, client_id: x}]", "clients"),
])
def test_the_devserver_says_in_one_line_what_is_wrong_with_its_file(tmp_path, content, says):
    path = tmp_path / "devserver.yaml"
    if content is not None:
        path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "falcon_oauth", "devserver", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("falcon-oauth: devserver: ") and says in line and str(path) in line


# -- the demo -------------------------------------------------------------------------------------------

def start_demo(port: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PORT": str(port), "PLUGIN_API_KEY": "a-key-that-would-refuse-every-curl",
           "INTROSPECTION_ENDPOINT": "/elsewhere"}  # a deployment's settings do not leak into the demo
    return subprocess.Popen([sys.executable, "-m", "falcon_oauth", "demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("curl") is None, reason="the demo prints curl commands: curl is needed")
def test_the_demo_is_ready_when_it_says_so_and_each_curl_gets_the_answer_on_its_label():
    port = free_port()
    process = start_demo(port)
    try:
        banner = read_until(process, "Stop with Ctrl-C")
        assert any("ready" in line for line in banner)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # listening already, no waiting
        assert_loopback_only(port)
        pairs = [(label, command) for label, command in zip(banner, banner[1:], strict=False)
                 if command.startswith("curl ")]
        assert len(pairs) == 8 and all(label.startswith("# ") for label, _ in pairs)
        assert any("JWT access token" in label for label, _ in pairs)
        for label, command in pairs:
            assert f"127.0.0.1:{port}" in command
            ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
            answer, promised = json.loads(ran.stdout), label.rsplit("→ ", 1)[1]
            if promised == "200":
                assert answer.get("status") in ("healthy", "ready"), (label, answer)
                continue
            verdict = answer.get("result", answer)  # SDK: inside "result"; host: the answer itself
            if promised == "authenticated":
                assert verdict["authenticated"] is True, (label, answer)
            else:
                reason = verdict["claims"].get("error") if "result" in answer else verdict["error_message"]
                assert (verdict["authenticated"], f"rejected: {reason}") == (False, promised), (label, answer)
    finally:
        stop(process)


@pytest.mark.integration
def test_the_demo_says_plainly_when_its_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_demo(port)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert output.strip().splitlines() == [
        f"falcon-oauth: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(set PORT to another port)"]

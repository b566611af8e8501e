"""The development authorization server and the demo: what a newcomer runs first."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from falcon_oauth.devserver import start_devserver
from tests.conftest import ROOT, free_port, stop, wait_for_port

CLIENT = ("mockforge", "mockforge-dev-secret")


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


@pytest.mark.integration
def test_the_demo_prints_commands_that_show_each_answer():
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    env.pop("AUTH_SERVER_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "falcon_oauth", "demo"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, process)
        printed = []
        while not any(line.startswith("Stop with Ctrl-C") for line in printed):
            printed.append(process.stdout.readline())
        commands = [line for line in printed if line.startswith("curl -s -X POST")]
        assert len(commands) == 5
        outcomes = []
        for command in commands:
            argv = shlex.split(command)
            body = argv[argv.index("-d") + 1]
            url = next(a for a in argv if a.startswith("http://"))
            outcomes.append(httpx.post(url, content=body, headers={"Content-Type": "application/json"},
                                       timeout=10).json())
    finally:
        stop(process)
    sdk_user, host_machine, sdk_inactive, host_expired, sdk_missing = outcomes
    assert sdk_user["result"]["authenticated"] is True and sdk_user["result"]["claims"]["email"] == "ada@example.test"
    assert host_machine["authenticated"] is True
    assert sdk_inactive["result"]["claims"]["error"] == "token_inactive"
    assert host_expired["authenticated"] is False
    assert sdk_missing["result"]["claims"]["error"] == "missing_token"
    assert all(re.search(r"127\.0\.0\.1:\d+", c) for c in commands)

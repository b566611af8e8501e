"""What the service says at start: one line naming what it serves and with what, a warning for each open
door on an address beyond loopback (once per service, whichever way it runs), and JSON log lines free of
terminal escapes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import httpx
import pytest

from falcon_oauth.startup import Listener, report
from tests.conftest import ROOT, start, stop
from tests.fakes import fake_settings

KEY = "startup-plugin-key-0123"


@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("192.168.0.1", False),
    ("plugin.example.test", False), ("localhost.example.test", False), ("::ffff:10.0.0.1", False),
])
def test_only_loopback_addresses_count_as_local(host, local):
    assert Listener(host, 8080).local is local


def test_a_unix_socket_is_local():
    listener = Listener("/run/falcon-oauth.sock", None)
    assert listener.local and str(listener) == "unix:/run/falcon-oauth.sock"
    assert str(Listener("::", 8080)) == "[::]:8080" and str(Listener("0.0.0.0", 80)) == "0.0.0.0:80"


def said(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "falcon_oauth.startup" and r.levelno == level]


@pytest.mark.parametrize(("env", "listeners", "warned"), [
    ({}, [Listener("127.0.0.1", 8080)], set()),
    ({}, [Listener("127.0.0.1", 8080), Listener("::1", 8080)], set()),
    ({}, [Listener("0.0.0.0", 8080)], {"PLUGIN_API_KEY", "METRICS_REQUIRE_KEY"}),
    ({}, [Listener("127.0.0.1", 8080), Listener("10.0.0.5", 8080)], {"PLUGIN_API_KEY", "METRICS_REQUIRE_KEY"}),
    ({}, None, {"PLUGIN_API_KEY", "METRICS_REQUIRE_KEY"}),  # not known: maybe reachable
    ({"PLUGIN_API_KEY": KEY}, [Listener("0.0.0.0", 8080)], {"METRICS_REQUIRE_KEY"}),
    ({"PLUGIN_API_KEY": KEY, "METRICS_REQUIRE_KEY": "true"}, [Listener("0.0.0.0", 8080)], set()),
    ({"PLUGIN_API_KEY": KEY, "METRICS_REQUIRE_KEY": "true"}, [Listener("::", 8080)], set()),
])
def test_a_warning_for_each_open_door_beyond_loopback(caplog, env, listeners, warned):
    caplog.set_level(logging.INFO, logger="falcon_oauth")
    report(fake_settings(**env), listeners)
    warnings = said(caplog, logging.WARNING)
    assert len(warnings) == len(warned)
    for setting in warned:  # each warning names the setting that closes its door
        assert len([w for w in warnings if setting in w]) == 1
    assert len(said(caplog, logging.INFO)) == 1


def test_an_address_the_process_cannot_see_is_not_taken_for_loopback(caplog):
    caplog.set_level(logging.INFO, logger="falcon_oauth")
    report(fake_settings(), None)
    warning = said(caplog, logging.WARNING)[0]
    assert "listening on an address this process cannot see, perhaps beyond loopback" in warning


def test_the_start_up_line_names_what_is_served_with_what_and_no_secret(caplog):
    caplog.set_level(logging.INFO, logger="falcon_oauth")
    settings = fake_settings(AUTH_SERVER_URL="https://plugin:url-password@as.example.test/realm",
                             INTROSPECTION_ENDPOINT="/introspect?api_key=query-secret", PLUGIN_API_KEY=KEY,
                             CACHE_BACKEND="memcached", MEMCACHED_SERVERS="mc-a:11211,mc-b:11211",
                             CACHE_KEY_SECRET="cache-key-secret")
    report(settings, [Listener("127.0.0.1", 9000)])
    (record,) = caplog.records
    line = record.getMessage()
    assert "listen 127.0.0.1:9000" in line and "dialects sdk and host" in line
    assert "introspection https://as.example.test/realm/introspect," in line
    assert "cache memcached (mc-a:11211,mc-b:11211)" in line
    assert "plugin key on" in line and "metrics key off" in line
    assert (record.listen, record.dialects, record.plugin_key) == (["127.0.0.1:9000"], ["sdk", "host"], "on")
    for secret in ("url-password", "query-secret", KEY, "cache-key-secret", "fake-secret"):
        assert secret not in json.dumps(vars(record), default=str)


def test_with_discovery_still_to_run_the_line_says_where_the_endpoints_will_come_from(caplog):
    caplog.set_level(logging.INFO, logger="falcon_oauth")
    report(fake_settings(OIDC_DISCOVERY="true", AUTH_SERVER_URL="https://as.example.test"), [Listener("::1", 1)])
    assert "introspection from the metadata of https://as.example.test," in caplog.records[0].getMessage()


# -- the real servers -----------------------------------------------------------------------------------

SERVERS = {  # as the README runs them
    "python-m": [sys.executable, "-m", "falcon_oauth"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "{host}", "--port", "{port}"],
    "uvicorn-log-config": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "{host}", "--port", "{port}",
                           "--log-config", "config/logging.json"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app", "--workers", "2",
                 "--threads", "2"],
    "gunicorn-uvicorn-worker": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "asgi:app",
                                "-k", "uvicorn_worker.UvicornWorker", "--workers", "2"],
}


def run_and_read_logs(authserver, tmp_path, command: list[str], **env: str) -> tuple[list[str], list[dict]]:
    """Starts the server, sends it a few requests (uvicorn logs each), stops it: its lines, raw and parsed."""
    process, url = start(command, authserver.environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path), **env))
    headers = {"X-API-Key": env["PLUGIN_API_KEY"]} if "PLUGIN_API_KEY" in env else {}
    try:
        with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
            token = authserver.token()
            for _ in range(3):
                answer = client.post("/plugin/authenticate", json={"credentials": {"type": "bearer", "token": token}})
                assert answer.json()["result"]["authenticated"] is True
            assert client.get("/nowhere").status_code == 404
    finally:
        stop(process)
    lines = process.output().splitlines()
    return lines, [json.loads(line) for line in lines]


def start_up_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if r["logger"] == "falcon_oauth.startup" and r["level"] == "INFO"]


def warnings_naming(records: list[dict], setting: str) -> list[dict]:
    return [r for r in records if r["level"] == "WARNING" and setting in r["message"]]


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_server_beyond_loopback_without_a_key_warns_once(authserver, tmp_path, server):
    lines, records = run_and_read_logs(authserver, tmp_path, SERVERS[server], HOST="0.0.0.0")
    (line,) = start_up_lines(records)  # once, however many workers
    assert line["listen"][0].startswith("0.0.0.0:") and line["plugin_key"] == "off"
    assert line["introspection"] == f"{authserver.url}/token/introspection"
    (warning,) = warnings_naming(records, "PLUGIN_API_KEY")
    assert line["listen"][0] in warning["message"]
    assert len(warnings_naming(records, "METRICS_REQUIRE_KEY")) == 1
    assert not any("\x1b" in line or "\\u001b" in line for line in lines)
    assert not any("color_message" in record for record in records)


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_server_on_loopback_says_its_line_once_and_warns_of_nothing(authserver, tmp_path, server):
    lines, records = run_and_read_logs(authserver, tmp_path, SERVERS[server], HOST="127.0.0.1")
    (line,) = start_up_lines(records)
    assert line["listen"][0].startswith("127.0.0.1:")
    assert [r for r in records if r["level"] == "WARNING"] == []
    assert not any("\x1b" in line or "\\u001b" in line for line in lines)
    assert any(r["logger"].startswith(("uvicorn", "gunicorn")) for r in records)  # the servers' own lines too


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_key_closes_the_verdict_endpoint_and_metrics_require_key_closes_metrics(authserver, tmp_path, server):
    _, records = run_and_read_logs(authserver, tmp_path / "a", SERVERS[server], HOST="0.0.0.0", PLUGIN_API_KEY=KEY)
    assert warnings_naming(records, "PLUGIN_API_KEY") == []
    assert len(warnings_naming(records, "METRICS_REQUIRE_KEY")) == 1
    _, records = run_and_read_logs(authserver, tmp_path / "b", SERVERS[server], HOST="0.0.0.0", PLUGIN_API_KEY=KEY,
                                   METRICS_REQUIRE_KEY="true")
    assert [r for r in records if r["level"] == "WARNING"] == []
    assert start_up_lines(records)[0]["metrics_key"] == "on"


def test_uvicorn_workers_each_say_where_they_listen(authserver, tmp_path):
    """With --workers the app lives in processes of their own, which read uvicorn's command line again:
    the line and the warnings come once per worker, with the address uvicorn was given (here through its
    environment variable, as uvicorn's command line allows)."""
    command = [sys.executable, "-m", "uvicorn", "asgi:app", "--port", "{port}", "--workers", "2",
               "--log-config", "config/logging.json"]  # JSON from the supervisor too, which never loads the app
    _, records = run_and_read_logs(authserver, tmp_path, command, HOST="127.0.0.1", UVICORN_HOST="0.0.0.0")
    lines = start_up_lines(records)
    assert len(lines) == 2 and len({line["pid"] for line in lines}) == 2
    assert all(line["listen"][0].startswith("0.0.0.0:") for line in lines)
    assert len(warnings_naming(records, "PLUGIN_API_KEY")) == 2


def test_uvicorn_on_a_unix_socket_is_local(authserver, tmp_path):
    socket_path = tmp_path / "plugin.sock"
    env = {**os.environ, **authserver.environ(HOST="0.0.0.0")}  # HOST is not what uvicorn binds: --uds is
    log = tmp_path / "out.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "asgi:app", "--uds", str(socket_path)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://plugin", timeout=5) as client:
            for _ in range(200):
                try:
                    assert client.get("/health").status_code == 200
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                pytest.fail("uvicorn never answered on its unix socket")
    finally:
        stop(process)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (line,) = start_up_lines(records)
    assert line["listen"] == [f"unix:{socket_path}"]
    assert [r for r in records if r["level"] == "WARNING"] == []


@pytest.mark.parametrize("server", ["python-m", "uvicorn", "gunicorn"])
def test_start_up_discovery_logs_the_endpoints_it_uses(authserver, tmp_path, server):
    _, records = run_and_read_logs(authserver, tmp_path, SERVERS[server], OIDC_DISCOVERY="true",
                                   INTROSPECTION_ENDPOINT="")
    found = [r for r in records if r["logger"] == "falcon_oauth.discovery"]
    # once: gunicorn's master reads the metadata first, and its workers, finding the same, say nothing more
    assert len(found) == 1
    assert all(r["endpoints"]["introspection"] == f"{authserver.url}/token/introspection" for r in found)
    assert {r["endpoints"]["userinfo"] for r in found} == {f"{authserver.url}/me"}

"""The documented ways to run the plugin, as real processes: python -m falcon_oauth, uvicorn asgi:app,
gunicorn wsgi:app, gunicorn with uvicorn workers. Same environment, same answers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import httpx
import pytest

from falcon_oauth.settings import Settings
from tests.conftest import ROOT, free_port, start, stop

pytestmark = pytest.mark.integration  # server processes

COMMANDS = {
    "python-m": [sys.executable, "-m", "falcon_oauth"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "wsgi:app", "-b", "127.0.0.1:{port}", "--threads", "4",
                 "--workers", "2", "--preload"],
    "gunicorn-uvicorn-worker": [sys.executable, "-m", "gunicorn", "asgi:app", "-b", "127.0.0.1:{port}",
                                "-k", "uvicorn_worker.UvicornWorker", "--workers", "2"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_documented_command_serves_verdicts(authserver, name):
    process, url = start(COMMANDS[name], authserver.environ())
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/health").json()["status"] == "healthy"
            token = authserver.token("read")
            for _ in range(3):  # several requests: with several workers, more than one answers
                body = {"credentials": {"type": "bearer", "token": token}}
                verdict = client.post("/plugin/authenticate", json=body).json()["result"]
                assert verdict["authenticated"] is True and verdict["claims"]["scope"] == "read"
            assert client.get("/health/ready").status_code == 200
    finally:
        stop(process)
    output = process.output()
    assert token not in output and "Traceback" not in output


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "falcon_oauth"],
    [sys.executable, "-m", "uvicorn", "falcon_oauth.asgi:app", "--host", "127.0.0.1", "--port", "{port}",
     "--no-access-log"],
    [sys.executable, "-m", "gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", "--workers", "1",
     "falcon_oauth.wsgi:app"],
    [sys.executable, "-m", "gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", "--workers", "1",
     "-k", "uvicorn_worker.UvicornWorker", "falcon_oauth.asgi:app"],
], ids=["python-m", "uvicorn-documented", "gunicorn-shipped-config", "gunicorn-uvicorn-worker-shipped-config"])
def test_the_shipped_ways_to_run_log_a_decision_line_and_no_access_line(tmp_path, authserver, command):
    process, url = start(command, authserver.environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    try:
        body = {"credentials": {"type": "bearer", "token": authserver.token("read")}}
        for _ in range(3):
            assert httpx.post(f"{url}/plugin/authenticate", json=body, timeout=10).json()["result"]["authenticated"]
    finally:
        stop(process)
    output = process.output()
    assert output.count('"outcome":"authenticated"') == 3  # the decision line of each request
    assert "/plugin/authenticate HTTP/1.1" not in output  # and no server access line beside it


def test_gunicorn_access_log_turns_on_as_json_lines(tmp_path, authserver):
    process, url = start([sys.executable, "-m", "gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", "--workers", "1",
                          "falcon_oauth.wsgi:app"],
                         authserver.environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path), GUNICORN_ACCESS_LOG="true"))
    try:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        stop(process)
    (line,) = [line for line in process.output().splitlines() if "GET /health HTTP/1.1" in line]
    assert json.loads(line)["logger"] == "gunicorn.access"


@pytest.mark.parametrize("config, worker, bad", [
    ("config/gunicorn.conf.py", ["wsgi:app"], {}),
    ("config/gunicorn.conf.py", ["-k", "uvicorn_worker.UvicornWorker", "asgi:app"], {"CACHE_BACKEND": "couchbase"}),
    ("python:falcon_oauth.gunicorn_conf", ["falcon_oauth.wsgi:app"], {"PORT": "eighty"}),
    ("python:falcon_oauth.gunicorn_conf", ["-k", "uvicorn_worker.UvicornWorker", "falcon_oauth.asgi:app"], {}),
], ids=["gthread-missing", "uvicorn-worker-invalid", "package-gthread-invalid", "package-uvicorn-worker-missing"])
def test_a_bad_setting_stops_gunicorn_in_the_master(tmp_path, config, worker, bad):
    """Not a worker that exits 2 and is started again, forever: gunicorn itself exits 2 with the line
    ``falcon-oauth`` prints for the same settings, before any worker boots."""
    settings = {f.name.upper() for f in dataclasses.fields(Settings)} | {"CONFIG_FILE"}
    env = {k: v for k, v in os.environ.items() if k.removesuffix("_FILE") not in settings}
    env |= {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PORT": "8080"}
    if bad:  # an invalid value; else AUTH_SERVER_URL is missing
        env |= {"AUTH_SERVER_URL": "http://127.0.0.1:9", "OAUTH_CLIENT_SECRET": "s", **bad}
    cli = subprocess.run([sys.executable, "-m", "falcon_oauth"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", config, "-b", f"127.0.0.1:{free_port()}",
                             *worker], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.returncode == 2
    (line,) = cli.stderr.splitlines()
    assert line.startswith("falcon-oauth: configuration error: ")
    assert result.stderr.splitlines() == [line] and result.stdout == ""  # no worker booted, nothing else said

"""The documented ways to run the plugin, as real processes: python -m falcon_oauth, uvicorn asgi:app,
gunicorn wsgi:app, gunicorn with uvicorn workers. Same environment, same answers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, stop, wait_for_port

COMMANDS = {
    "python-m": [sys.executable, "-m", "falcon_oauth"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "wsgi:app", "-b", "127.0.0.1:{port}", "--threads", "4",
                 "--workers", "2", "--preload"],
    "gunicorn-uvicorn-worker": [sys.executable, "-m", "gunicorn", "asgi:app", "-b", "127.0.0.1:{port}",
                                "-k", "uvicorn_worker.UvicornWorker", "--workers", "2"],
}


def start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """The server process, listening; ``process.output()`` is what it printed so far (its output goes to a
    file, which can be read at any time, also after the process ended)."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", **env, "PORT": str(port)}  # env may name another HOST
    argv = [part.format(port=port, host=env["HOST"]) for part in command]
    log = tempfile.NamedTemporaryFile(prefix="falcon-oauth-server-", suffix=".log", delete=False)
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.output = lambda: Path(log.name).read_text()
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"


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

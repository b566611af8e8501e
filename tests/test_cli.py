"""The command line as a user meets it: help and version for the program and each command, usage naming the
program as it was invoked (the installed ``falcon-oauth`` is checked in test_install.py), and one line, never
a traceback, for what stops it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from falcon_oauth import __version__
from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # each runs the program


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falcon_oauth", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["serve", "--help"], ["demo", "--help"],
                                  ["devserver", "--help"]])
def test_help_for_the_program_and_each_command(args):
    result = run(*args)
    assert result.returncode == 0 and result.stderr == ""
    command = f" {args[0]}" if args[0] in ("serve", "demo", "devserver") else ""
    assert result.stdout.startswith(f"usage: python -m falcon_oauth{command} [-h]")


def test_version():
    result = run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"python -m falcon_oauth {__version__}\n", "")


def test_an_unknown_command_is_a_usage_error():
    result = run("sevre")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("python -m falcon_oauth: error: argument")


def test_a_taken_port_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(AUTH_SERVER_URL="http://127.0.0.1:9", OAUTH_CLIENT_SECRET="s", HOST="127.0.0.1", PORT=str(port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"falcon-oauth: cannot listen on 127.0.0.1:{port}: Address already in use (set PORT to another port)"]

"""``pip install .`` into a new virtual environment gives everything needed to run the plugin, without the
checkout: the ``falcon-oauth`` command, the ASGI and WSGI apps, gunicorn's settings, the logging config and
the license. The environment sees the system's packages (the dependencies are installed there already),
and the plugin is installed from a copy of the repository's files, so nothing is written into the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from falcon_oauth import __version__
from tests.conftest import ROOT, free_port, stop, wait_for_port

pytestmark = pytest.mark.integration  # a virtual environment, pip and server processes

SETTINGS = {"AUTH_SERVER_URL": "http://127.0.0.1:9", "OAUTH_CLIENT_SECRET": "s", "HOST": "127.0.0.1"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with the plugin installed from a copy of the checkout; its bin directory."""
    where = tmp_path_factory.mktemp("install")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "tests", "bench", "deploy", "node_modules", "__pycache__", "build", "dist", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(where / "venv")], check=True,
                   timeout=120)
    bin_dir = where / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-deps", str(source)], check=True, timeout=300)
    shutil.rmtree(source)  # from here on, only what was installed
    return bin_dir


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_the_command_is_installed(venv, tmp_path):
    version = run([str(venv / "falcon-oauth"), "--version"], tmp_path)
    assert (version.returncode, version.stdout) == (0, f"falcon-oauth {__version__}\n")
    usage = run([str(venv / "falcon-oauth"), "devserver", "--help"], tmp_path)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: falcon-oauth devserver ")


def test_the_apps_and_the_license_come_from_the_installed_package(venv, tmp_path):
    script = ("import importlib.metadata, falcon_oauth, falcon_oauth.asgi, falcon_oauth.wsgi\n"
              "meta = importlib.metadata.metadata('falcon-oauth')\n"
              "print(falcon_oauth.__file__, meta['License-Expression'], *meta.get_all('License-File'))")
    result = run([str(venv / "python"), "-c", script], tmp_path, **SETTINGS)
    assert result.returncode == 0, result.stderr
    path, license_expression, license_file = result.stdout.split()
    assert Path(path).is_relative_to(venv.parent) and (license_expression, license_file) == ("MIT", "LICENSE")


@pytest.mark.parametrize("command", [
    ["gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", "--workers", "1", "falcon_oauth.wsgi:app"],
    ["gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", "--workers", "1", "-k", "uvicorn_worker.UvicornWorker",
     "falcon_oauth.asgi:app"],
    ["uvicorn", "falcon_oauth.asgi:app", "--host", "127.0.0.1", "--port", "{port}"],
    ["falcon-oauth"],
], ids=["gunicorn", "gunicorn-uvicorn-worker", "uvicorn", "falcon-oauth"])
def test_each_server_runs_from_the_installed_package(venv, tmp_path, command):
    port = free_port()
    argv = [str(venv / "python"), "-m", *command] if command[0] != "falcon-oauth" else [str(venv / command[0])]
    env = {**os.environ, **SETTINGS, "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    process = subprocess.Popen([part.format(port=port) for part in argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, process)
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10).json()["info"]["license"]["name"] == "MIT"
    finally:
        stop(process)
    logged = process.stdout.read()
    assert logged.startswith("{") and "Traceback" not in logged  # JSON log lines: logging.json was found

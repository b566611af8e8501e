"""Shared fixtures and helpers: a real authorization server (oidc-provider), a real memcached, server
processes, and the app in both kinds (every HTTP-level test runs against the ASGI app and the WSGI app).

Two kinds of tests (markers registered in pyproject.toml): ``integration`` tests need node (oidc-provider),
memcached or start processes; every other test is marked ``unit`` here and runs with none of them
(``pytest -m unit``, about a minute). A missing prerequisite stops the session with one line saying what to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

import falcon.testing
import httpx
import pytest
from hypothesis import settings

from falcon_oauth.app import create_app
from falcon_oauth.settings import Settings, load_settings

# CI replays the same examples every run (a red CI must be reproducible); elsewhere each run explores anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

HERE = Path(__file__).parent
ROOT = HERE.parent
CONTRACT = HERE / "fixtures" / "contract"  # the project's own examples of both wire dialects
AUTHSERVER = HERE / "authserver"

# The clients configured in tests/authserver/server.mjs.
PLUGIN_CLIENT = ("mockforge", "p@ss:word+/= with space")
POST_CLIENT = ("mockforge-post", "post-secret")
APP_CLIENT = ("app", "app-secret")
USER_GRANT = "urn:falcon-oauth:test:user"


API_KEY = "purge-key-0123456789"


INTEGRATION_FIXTURES = {"authserver", "memcached", "redis"}  # a test using one of these is an integration test


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)


class _UnitGuard:
    """While a ``unit`` test (its fixtures included) runs, starting a process fails it: the fast subset
    must never need node, memcached or a server process. Audit hooks cannot be removed, hence the flag."""

    active = False

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active and event in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
            raise RuntimeError(f"a unit test started a process ({args[0]!r}): mark it integration")


sys.addaudithook(_UnitGuard.hook)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    _UnitGuard.active = request.node.get_closest_marker("unit") is not None
    try:
        yield
    finally:
        _UnitGuard.active = False


def missing(what: str) -> NoReturn:
    """Stops the whole session with one line instead of failing every test that needs ``what``."""
    pytest.exit(f"falcon-oauth tests: {what}; or run only the tests that need neither: "
                "`python3 -m pytest -m unit`", returncode=3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class AuthServer:
    """The running oidc-provider and the few token operations tests need."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def token(self, scope: str = "read write", resource: str | None = None) -> str:
        data = {"grant_type": "client_credentials", "scope": scope}
        if resource:
            data["resource"] = resource
        answer = self.http.post("/token", data=data, auth=APP_CLIENT)
        answer.raise_for_status()
        return answer.json()["access_token"]

    def user_token(self, sub: str = "user-42", scope: str = "openid email profile read") -> str:
        answer = self.http.post("/token", data={"grant_type": USER_GRANT, "sub": sub, "scope": scope},
                                auth=APP_CLIENT)
        answer.raise_for_status()
        return answer.json()["access_token"]

    def revoke(self, token: str) -> None:
        self.http.post("/token/revocation", data={"token": token}, auth=APP_CLIENT).raise_for_status()

    def environ(self, **extra: str) -> dict[str, str]:
        """The plugin's environment for this server, as an operator would write it."""
        env = {"AUTH_SERVER_URL": self.url, "INTROSPECTION_ENDPOINT": "/token/introspection",
               "OAUTH_CLIENT_ID": PLUGIN_CLIENT[0], "OAUTH_CLIENT_SECRET": PLUGIN_CLIENT[1]}
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Settings:
        return load_settings(self.environ(**extra))


@pytest.fixture(scope="session")
def authserver() -> Iterator[AuthServer]:
    node = shutil.which("node")
    if node is None:
        missing("the integration tests need Node.js 20.18+ for oidc-provider (`node` is not on PATH)")
    if not (AUTHSERVER / "node_modules" / "oidc-provider").is_dir():
        missing("the integration tests need oidc-provider: `scripts/test` installs it")
    port = free_port()
    process = subprocess.Popen([node, str(AUTHSERVER / "server.mjs"), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield AuthServer(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


class CacheServer:
    """A cache server of Debian's on a free loopback port, started and killed by a test (outages)."""

    binary = ""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[Any] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        if shutil.which(self.binary) is None:
            missing(f"the integration tests need {self.binary} (not on PATH): `scripts/test` installs it")
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Memcached(CacheServer):
    binary = "memcached"

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-l", "127.0.0.1", "-p", str(self.port),
                "-U", "0", "-m", "64", "-u", "root"]


class Redis(CacheServer):
    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [self.binary, "--bind", "127.0.0.1",
                "--port", str(self.port), "--save", "", "--appendonly", "no"]


def _running(server: CacheServer) -> Iterator[CacheServer]:
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture()
def memcached() -> Iterator[Memcached]:
    yield from _running(Memcached())


@pytest.fixture()
def redis() -> Iterator[Redis]:
    yield from _running(Redis())


class CacheClient:
    """The verdict cache of one app, driven as the app drives it (the sync driver): ``get`` is a lookup whose
    fill cannot decide (None unless an entry serves), ``set`` a lookup whose fill answers ``record``."""

    def __init__(self, settings: Settings, clock: Any = time.time, monotonic: Any = time.monotonic) -> None:
        from falcon_oauth.cache import VerdictCache
        from falcon_oauth.drivers import SyncDriver
        from falcon_oauth.store import Store

        self.cache = VerdictCache(settings, clock, monotonic)
        self.store = Store(settings) if self.cache.shared else None
        self.driver = SyncDriver(settings, self.store)
        self.fills = 0

    def key(self, token: str) -> str:
        return self.cache.key(token)

    def lookup(self, token: str, record: Any = None) -> tuple[Any, str] | None:
        from falcon_oauth.core import Undecided

        def fill() -> Any:
            self.fills += 1
            if record is None:
                raise Undecided("auth_server_unavailable", "no answer in this test")
            return record
            yield  # a generator, as every fill is

        try:
            return self.driver.run(self.cache.get_or_fill(token, fill))
        except Undecided:
            return None

    def get(self, token: str) -> Any:
        found = self.lookup(token)
        return None if found is None else found[0]

    def set(self, token: str, record: Any) -> None:
        self.lookup(token, record)

    def delete(self, token: str) -> bool:
        return self.driver.run(self.cache.purge(token))

    def clear(self) -> bool:
        return self.driver.run(self.cache.purge(None))


@pytest.fixture(params=[False, True], ids=["wsgi", "asgi"])
def asgi(request: pytest.FixtureRequest) -> bool:
    """Every HTTP-level test runs against both app kinds."""
    return request.param


@pytest.fixture()
def make_client(asgi: bool):
    """``make_client(settings, transport=None, clock=..., monotonic=...)`` → a Falcon test client of the app kind
    under test."""

    def make(settings: Settings, transport: Any = None, **clocks: Any) -> falcon.testing.TestClient:
        return falcon.testing.TestClient(create_app(settings, asgi=asgi, transport=transport, **clocks))

    return make


def start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A server process started from the repository root on a free loopback port (``{port}`` in the
    command; ``{host}`` is HOST, loopback unless ``env`` names another), listening; ``process.output()`` is what
    it printed so far (its output goes to a file, which can be read at any time, also after the process ended)."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", **env, "PORT": str(port)}
    argv = [part.format(port=port, host=env["HOST"]) for part in command]
    log = tempfile.NamedTemporaryFile(prefix="falcon-oauth-server-", suffix=".log", delete=False)
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.output = lambda: Path(log.name).read_text()
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the tests' small loopback HTTP servers: HTTP/1.1, quiet, answers JSON."""

    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def form(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args: Any) -> None:
        pass


def contract(name: str, token: str | None = None) -> Any:
    """An example request or answer of tests/fixtures/contract/, with REPLACE_WITH_TOKEN replaced."""
    import json

    text = (CONTRACT / name).read_text()
    if token is not None:
        text = text.replace("REPLACE_WITH_TOKEN", token)
    return json.loads(text)


@pytest.fixture()
def standin():
    from tests.standin import StandIn

    server = StandIn()
    yield server
    server.close()


def host_body(token: str) -> dict:
    return {"context": {"plugin_id": "auth-python-oauth"}, "method": "GET", "uri": "/api",
            "query_params": {"access_token": token}}


def ask(client, token: str) -> dict:
    result = client.simulate_post("/plugin/authenticate", json=host_body(token))
    assert result.status_code == 200, result.text
    return result.json


def memcached_dump(server: str) -> list[tuple[str, bytes]]:
    """Every key and value in a memcached, read over its text protocol."""
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
        keys = [unquote(part.split(b"=", 1)[1].decode()) for line in data.splitlines()
                for part in line.split() if part.startswith(b"key=")]
        pairs = []
        for key in keys:
            sock.sendall(f"get {key}\r\n".encode())
            reply = b""
            while not reply.endswith(b"END\r\n"):
                reply += sock.recv(65536)
            pairs.append((key, reply))
    return pairs

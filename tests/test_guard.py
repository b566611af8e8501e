"""No spelling of a path reaches a keyed resource without the plugin's key, and a request whose path is not
canonical is 400 before routing: through Falcon's test client (both app kinds), through a WSGI server that
gives no raw target (wsgiref), and through real uvicorn and gunicorn processes, byte for byte."""

from __future__ import annotations

import socket
import sys
import threading
import wsgiref.simple_server
from urllib.parse import urlsplit

import pytest

from falcon_oauth.app import create_app
from falcon_oauth.settings import load_settings
from tests.conftest import start, stop

API_KEY = "guard-key-0123456789"
KEY = {"X-API-Key": API_KEY}
BODY = b'{"credentials": {"type": "bearer", "token": "good-guard"}}'
PURGE = b'{"token": "good-never-asked"}'

# (method, target, status without the key); with the key, a 401 becomes 200 and everything else stays.
SPELLINGS = [
    ("POST", "/plugin/authenticate", 401), ("POST", "/plugin/authenticate/", 401),
    ("POST", "/plugin/authenticate?x=1", 401), ("POST", "//plugin/authenticate", 400),
    ("POST", "///plugin/authenticate", 400), ("POST", "/plugin//authenticate", 400),
    ("POST", "/plugin/authenticate//", 400), ("POST", "/plugin/./authenticate", 400),
    ("POST", "/./plugin/authenticate", 400), ("POST", "/x/../plugin/authenticate", 400),
    ("POST", "/plugin/authenticate/.", 400), ("POST", "/%70lugin/authenticate", 400),
    ("POST", "/plugin%2Fauthenticate", 400), ("POST", "/plugin%2fauthenticate", 400),
    ("POST", "/%2e/plugin/authenticate", 400), ("POST", "/plugin\\authenticate", 400),
    ("POST", "/plugin/authenticate%00", 400),
    ("POST", "/plugin/authenticate;x", 404), ("POST", "/PLUGIN/authenticate", 404), ("POST", "/plugin/nope", 404),
    ("POST", "/plugin/cache/purge", 401), ("POST", "/plugin/cache/purge/", 401),
    ("POST", "//plugin/cache/purge", 400), ("POST", "/plugin/cache//purge", 400),
    ("POST", "/plugin/cache/./purge", 400), ("POST", "/plugin/cache/%70urge", 400),
    ("GET", "/metrics", 401), ("GET", "/metrics/", 401), ("GET", "/metrics?x", 401), ("GET", "//metrics", 400),
    ("GET", "/./metrics", 400), ("GET", "/%6Detrics", 400), ("GET", "/health", 200), ("GET", "//health", 400),
]
# only a real server can be sent these
RAW_ONLY = [("POST", "/plugin/authenticate/..", 400), ("POST", "/plugin/%2e%2e/plugin/authenticate", 400)]
# A fragment, or a target in absolute-form: some HTTP parsers (h11, gunicorn's) pass them on, and the guard
# refuses them; httptools drops the fragment and the scheme and host itself, and the path left is routed,
# key check included. Either way, never an answer without the key.
PARSER_DEPENDENT = [("POST", "/plugin/authenticate#x"), ("POST", "http://127.0.0.1/plugin/authenticate"),
                    ("POST", "http://127.0.0.1//plugin/authenticate"), ("GET", "/metrics#x")]


CODES = {400: "non_canonical_path", 401: "unauthorized", 404: "not_found"}


def with_key(status: int) -> int:
    return 200 if status == 401 else status


@pytest.fixture()
def keyed_env(standin):
    return standin.environ(PLUGIN_API_KEY=API_KEY, METRICS_REQUIRE_KEY="true")


def body(target: str) -> bytes:
    return PURGE if "/cache/" in target else BODY


def ask(client, method: str, target: str, headers: dict | None = None):
    path, _, query = target.partition("?")
    return client.simulate_request(method, path, query_string=query or None, body=body(target),
                                   headers={"Content-Type": "application/json", **(headers or {})})


def test_every_spelling_needs_the_key_or_is_refused(make_client, keyed_env, standin):
    client = make_client(load_settings(keyed_env))
    for method, target, status in SPELLINGS:
        result = ask(client, method, target)
        assert result.status_code == status, target
        if status in CODES:
            assert result.json["error"] == CODES[status], target
    assert standin.total == 0  # nothing without the key got as far as a resource
    for method, target, status in SPELLINGS:
        assert ask(client, method, target, KEY).status_code == with_key(status), target
    assert standin.calls["good-guard"] == 1


def test_a_fragment_in_the_target_is_refused(make_client, keyed_env):
    client = make_client(load_settings(keyed_env))
    assert ask(client, "POST", "/plugin/authenticate#x", KEY).json["error"] == "non_canonical_path"


def test_the_metrics_route_is_open_unless_metrics_require_the_key(make_client, standin):
    client = make_client(load_settings(standin.environ(PLUGIN_API_KEY=API_KEY)))
    assert client.simulate_get("/metrics").status_code == 200
    assert client.simulate_get("//metrics").status_code == 400
    assert ask(client, "POST", "/plugin/authenticate").status_code == 401


def test_without_a_key_paths_must_still_be_canonical(make_client, standin):
    client = make_client(load_settings(standin.environ()))
    assert ask(client, "POST", "/plugin/authenticate").status_code == 200
    for target in ("//plugin/authenticate", "/plugin/./authenticate", "/%70lugin/authenticate"):
        assert ask(client, "POST", target).status_code == 400
    assert standin.calls["good-guard"] == 1


def test_a_purge_by_another_spelling_purges_nothing(make_client, keyed_env, standin):
    client = make_client(load_settings(keyed_env))
    answer = ask(client, "POST", "/plugin/authenticate", KEY)
    assert answer.json["result"]["authenticated"] is True and standin.calls["good-guard"] == 1
    for target in ("//plugin/cache/purge", "/plugin/cache//purge", "/plugin/cache/purge/", "/plugin/cache/purge"):
        result = client.simulate_post(target, json={"all": True})
        assert result.status_code in (400, 401), target
    ask(client, "POST", "/plugin/authenticate", KEY)
    assert standin.calls["good-guard"] == 1  # still cached: nothing was purged
    assert client.simulate_post("/plugin/cache/purge/", json={"all": True}, headers=KEY).json == {"purged": "all"}
    ask(client, "POST", "/plugin/authenticate", KEY)
    assert standin.calls["good-guard"] == 2


# -- real servers ---------------------------------------------------------------------------------------

def send(port: int, method: str, target: str, headers: dict | None = None) -> int:
    """One request with exactly this target on the wire; the answer's status code."""
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            f"Content-Length: {len(body(target))}", "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body(target))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def check_server(port: int) -> None:
    for method, target, status in SPELLINGS + RAW_ONLY:
        assert send(port, method, target) == status, target
        assert send(port, method, target, KEY) == with_key(status), target
    for method, target in PARSER_DEPENDENT:
        refused = send(port, method, target)
        assert refused in (400, 401), target
        assert send(port, method, target, KEY) == with_key(refused), target


def test_a_wsgi_server_without_a_raw_target(keyed_env, standin):
    """wsgiref sets no RAW_URI: the guard sees the decoded PATH_INFO, and the key check by route still holds
    for what decoding hides (``/%70lugin`` is routed to /plugin/authenticate, and needs the key there)."""
    app = create_app(load_settings(keyed_env), asgi=False)
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        assert send(port, "POST", "/%70lugin/authenticate") == 401
        assert send(port, "POST", "/%70lugin/authenticate", KEY) == 200
        assert send(port, "POST", "/plugin%2Fcache%2Fpurge") == 401
        assert send(port, "POST", "//plugin/authenticate") == 401  # http.server itself merges leading slashes
        assert send(port, "POST", "/plugin//authenticate") == 400
        assert send(port, "POST", "/plugin/./authenticate", KEY) == 400
        assert send(port, "GET", "/%6Detrics") == 401
    finally:
        server.shutdown()
        server.server_close()


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}"],
    "uvicorn-h11": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}",
                    "--http", "h11"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "wsgi:app", "-b", "127.0.0.1:{port}", "--threads", "4"],
    "gunicorn-uvicorn-worker": [sys.executable, "-m", "gunicorn", "asgi:app", "-b", "127.0.0.1:{port}",
                                "-k", "uvicorn_worker.UvicornWorker"],
}


@pytest.mark.integration  # server processes
@pytest.mark.parametrize("server", list(SERVERS))
def test_real_servers_send_every_spelling_to_the_guard(server, keyed_env):
    process, url = start(SERVERS[server], keyed_env)
    try:
        check_server(urlsplit(url).port)
    finally:
        stop(process)
    assert "Traceback" not in process.output()

"""Faults of the authorization server: never "authenticated", always 503 in the request's dialect, within
the timeout. Real sockets where a real fault can be made (refused, slow, reset); a fake transport for
answers a real server would not give."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import contract, free_port
from tests.fakes import FakeAuthServer, fake_settings

TOKEN = "well-formed-token"


def both_dialects(client) -> list:
    return [client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", TOKEN)),
            client.simulate_post("/plugin/authenticate", json=contract("host_request_custom_token.json", TOKEN))]


def assert_undecided(results: list, code: str) -> None:
    sdk, host = results
    assert sdk.status_code == 503 and sdk.json == {"success": False, "error": code}
    assert host.status_code == 503 and host.json == {"authenticated": False, "identity": None, "claims": {},
                                                     "metadata": {}, "error_message": code}
    for result in results:
        assert int(result.headers["Retry-After"]) >= 1
        assert "auth.invalid" not in result.text and TOKEN not in result.text


class R:
    """An answer to build afresh for every request (a response body can be read only once)."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize("response, code", [
    (R(500, text="Internal error at http://auth.invalid/x"), "auth_server_error"),
    (R(502), "auth_server_unavailable"),
    (R(503, headers={"Retry-After": "17"}), "auth_server_unavailable"),
    (R(503), "auth_server_unavailable"),
    (R(401, json={"error": "invalid_client"}), "auth_server_error"),
    (R(403), "auth_server_error"),
    (R(200, text="<html><form>Log in</form></html>", headers={"Content-Type": "text/html"}),
     "auth_server_bad_response"),
    (R(200, text="not json"), "auth_server_bad_response"),
    (R(200, json={"sub": "u"}), "auth_server_bad_response"),
    (R(200, json={"active": "true"}), "auth_server_bad_response"),
    (R(200, json={"active": 1}), "auth_server_bad_response"),
    (R(200, content=b'{"active": true, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'),
     "auth_server_bad_response"),
])
def test_untrustworthy_answers_are_undecided(make_client, response, code):
    fake = FakeAuthServer(lambda request: httpx.Response(*response.args, **response.kwargs))
    client = make_client(fake_settings(), fake)
    assert_undecided(both_dialects(client), code)


def test_retry_after_of_the_server_is_passed_on(make_client):
    fake = FakeAuthServer(lambda request: httpx.Response(503, headers={"Retry-After": "17"}))
    sdk, host = both_dialects(make_client(fake_settings(), fake))
    assert sdk.headers["Retry-After"] == "17" and host.headers["Retry-After"] == "17"


def test_undecided_is_never_cached(make_client):
    answers = iter([httpx.Response(500), httpx.Response(200, json={"active": True, "sub": "u"})])
    fake = FakeAuthServer(lambda request: next(answers))
    client = make_client(fake_settings(), fake)
    first, second = both_dialects(client)
    assert first.status_code == 503
    assert second.status_code == 200 and second.json["authenticated"] is True


def test_connection_refused_is_undecided(make_client):
    client = make_client(fake_settings(AUTH_SERVER_URL=f"http://127.0.0.1:{free_port()}"))
    assert_undecided(both_dialects(client), "auth_server_unavailable")


class RawServer:
    """A loopback TCP server whose every connection is handed to ``behaviour(conn)``."""

    def __init__(self, behaviour) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.behaviour = behaviour
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            self.behaviour(conn, self.stopped)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture()
def raw_server(request) -> Iterator[RawServer]:
    server = RawServer(request.param)
    yield server
    server.close()


def hang(conn, stopped):
    stopped.wait(30)


def drip(conn, stopped):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n")
    for _ in range(40):
        if stopped.wait(0.3):
            return
        conn.sendall(b" ")


def reset_mid_body(conn, stopped):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"act")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.parametrize("raw_server", [hang, drip, reset_mid_body], indirect=True, ids=["hang", "drip", "reset"])
def test_slow_or_broken_servers_are_undecided_within_the_timeout(make_client, raw_server):
    client = make_client(fake_settings(AUTH_SERVER_URL=raw_server.url, AUTH_SERVER_TIMEOUT="1"))
    started = time.monotonic()
    results = both_dialects(client)
    assert time.monotonic() - started < 2 * 1 + 1.5  # two requests, each within the timeout plus a margin
    assert_undecided(results, "auth_server_unavailable")
    assert client.simulate_get("/health").status_code == 200

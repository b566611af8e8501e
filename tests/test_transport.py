"""Transport to the authorization server: TLS with a private CA, mutual TLS, bounded retries within one
overall deadline, and the plain-http warning. Real TLS on loopback with a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import falcon.testing
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from falcon_oauth.app import create_app
from falcon_oauth.settings import SettingsError, load_settings
from tests.conftest import JsonHandler, contract
from tests.fakes import FakeAuthServer, fake_settings


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer_key, issuer_name, key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("falcon-oauth test CA", ca_key, _name("falcon-oauth test CA"), ca_key, ca=True)
    files = {}
    for label, cert, key in (("ca", ca, ca_key),
                             ("server", _certificate("127.0.0.1", ca_key, ca.subject, server_key, server=True),
                              server_key),
                             ("client", _certificate("mockforge", ca_key, ca.subject, client_key), client_key)):
        (directory / f"{label}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{label}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        files[label], files[f"{label}_key"] = directory / f"{label}.pem", directory / f"{label}.key"
    return files


class Handler(JsonHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.form()
        self.answer(200, json.dumps({"active": True, "sub": "tls-user"}).encode())


def https_server(pki, require_client_cert: bool) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server_key"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(params=[False, True], ids=["tls", "mtls"])
def tls_server(request, pki):
    server = https_server(pki, require_client_cert=request.param)
    yield server, request.param
    server.shutdown()
    server.server_close()


def ask(client) -> object:
    return client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "tls-token"))


def test_an_unknown_ca_is_refused_never_accepted(make_client, tls_server):
    server, _ = tls_server
    client = make_client(fake_settings(AUTH_SERVER_URL=f"https://127.0.0.1:{server.server_port}",
                                       AUTH_SERVER_TIMEOUT="2"))
    result = ask(client)
    assert result.status_code == 503 and result.json == {"success": False, "error": "auth_server_unavailable"}


def test_a_private_ca_bundle_and_a_client_certificate(make_client, tls_server, pki):
    server, mutual = tls_server
    env = {"AUTH_SERVER_URL": f"https://127.0.0.1:{server.server_port}", "AUTH_SERVER_CA_BUNDLE": str(pki["ca"]),
           "AUTH_SERVER_TIMEOUT": "2"}
    without_cert = ask(make_client(fake_settings(**env)))
    if mutual:
        assert without_cert.status_code == 503
    else:
        assert without_cert.json["result"]["authenticated"] is True
    with_cert = ask(make_client(fake_settings(**env, AUTH_SERVER_CLIENT_CERT=str(pki["client"]),
                                              AUTH_SERVER_CLIENT_KEY=str(pki["client_key"]))))
    assert with_cert.status_code == 200 and with_cert.json["result"]["user_id"] == "tls-user"


def test_tls_settings_are_checked_at_start(pki):
    with pytest.raises(SettingsError, match="AUTH_SERVER_CA_BUNDLE"):
        fake_settings(AUTH_SERVER_CA_BUNDLE="/nonexistent.pem")
    with pytest.raises(SettingsError, match="go together"):
        fake_settings(AUTH_SERVER_CLIENT_CERT=str(pki["client"]))


# -- retries --------------------------------------------------------------------------------------------

def flaky(*failures):
    """A fake server that fails in the given ways, then answers active."""
    remaining = list(failures)

    def answer(request):
        if remaining:
            failure = remaining.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure)
        return httpx.Response(200, json={"active": True, "sub": "u"})

    return FakeAuthServer(answer)


@pytest.mark.parametrize("failure", [502, 503, 504, httpx.ConnectError("refused"),
                                     httpx.RemoteProtocolError("closed")], ids=str)
def test_one_retry_by_default_for_connection_errors_and_gateway_statuses(make_client, failure):
    fake = flaky(failure)
    assert ask(make_client(fake_settings(), fake)).json["result"]["authenticated"] is True
    assert fake.calls == 2


@pytest.mark.parametrize("failure", [500, 401, httpx.ReadTimeout("slow")], ids=str)
def test_no_retry_for_other_failures(make_client, failure):
    fake = flaky(failure)
    assert ask(make_client(fake_settings(), fake)).status_code == 503
    assert fake.calls == 1


def test_retries_are_bounded_by_count(make_client):
    fake = flaky(503, 503, 503, 503)
    assert ask(make_client(fake_settings(AUTH_SERVER_RETRIES="2"), fake)).status_code == 503
    assert fake.calls == 3
    fake = flaky(503)
    assert ask(make_client(fake_settings(AUTH_SERVER_RETRIES="0"), fake)).status_code == 503
    assert fake.calls == 1


def test_retries_stay_inside_the_overall_deadline(make_client):
    def slow_503(request):
        time.sleep(0.3)
        return httpx.Response(503)

    fake = FakeAuthServer(slow_503)
    client = make_client(fake_settings(AUTH_SERVER_RETRIES="5", AUTH_SERVER_TIMEOUT="1"), fake)
    started = time.monotonic()
    assert ask(client).status_code == 503
    assert time.monotonic() - started < 1.5
    assert 2 <= fake.calls <= 4


def test_plain_http_to_a_remote_server_warns_at_start(caplog, asgi):
    with caplog.at_level(logging.WARNING, logger="falcon_oauth"):
        create_app(load_settings({"AUTH_SERVER_URL": "http://auth.example.test", "OAUTH_CLIENT_SECRET": "x"}),
                   asgi=asgi)
    assert "plain http" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="falcon_oauth"):
        create_app(load_settings({"AUTH_SERVER_URL": "http://127.0.0.1:9", "OAUTH_CLIENT_SECRET": "x"}), asgi=asgi)
        create_app(load_settings({"AUTH_SERVER_URL": "https://auth.example.test", "OAUTH_CLIENT_SECRET": "x"}),
                   asgi=asgi)
    assert "plain http" not in caplog.text


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_misses_reuse_one_connection_even_from_a_new_thread_each(standin, asgi):
    """A miss must not cost the authorization server a new connection, also under WSGI servers that run each
    request on a thread (or greenlet) of its own: calls borrow idle clients, whose connections stay open.
    An ASGI app serves every request from its one event loop."""
    app = create_app(load_settings(standin.environ()), asgi=asgi)
    bodies = [{"credentials": {"token": f"good-conn-{n}"}} for n in range(20)]
    if asgi:
        async def run() -> list[dict]:
            async with falcon.testing.ASGIConductor(app) as conductor:
                return [(await conductor.simulate_post("/plugin/authenticate", json=body)).json for body in bodies]
        answers = asyncio.run(run())
    else:
        client, answers = falcon.testing.TestClient(app), []
        for body in bodies:
            thread = threading.Thread(target=lambda body=body: answers.append(
                client.simulate_post("/plugin/authenticate", json=body).json))
            thread.start()
            thread.join()
    assert [a["result"]["authenticated"] for a in answers] == [True] * 20 and standin.total == 20
    assert standin.connections == 1


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_after_a_burst_of_misses_at_most_64_connections_stay_open(standin, asgi):
    """100 concurrent misses need 100 connections; once they are answered the plugin keeps at most 64 of them
    alive to the authorization server (as one shared pool would), and closes the rest."""
    standin.delay = 1.0  # long enough for all 100 to be under way at once, even on a loaded machine
    app = create_app(load_settings(standin.environ(AUTH_SERVER_MAX_INFLIGHT="100")), asgi=asgi)
    bodies = [{"credentials": {"token": f"good-burst-{n}"}} for n in range(100)]
    if asgi:
        async def run() -> list[dict]:
            async with falcon.testing.ASGIConductor(app) as conductor:
                answers = await asyncio.gather(*(conductor.simulate_post("/plugin/authenticate", json=body)
                                                 for body in bodies))
                await asyncio.sleep(0.5)
                return [a.json for a in answers]
        answers = asyncio.run(run())
    else:
        client = falcon.testing.TestClient(app)
        with ThreadPoolExecutor(max_workers=100) as pool:
            answers = list(pool.map(lambda body: client.simulate_post("/plugin/authenticate", json=body).json,
                                    bodies))
        time.sleep(0.5)
    assert [a["result"]["authenticated"] for a in answers] == [True] * 100
    assert standin.connections == 100 and standin.open_connections <= 64

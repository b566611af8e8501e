"""A DEVELOPMENT authorization server, for demos and for MockForge users who need something to mock
against. Never use it in production, and this project's own integration tests never use it in place of
a real one (they run oidc-provider).

It speaks RFC 7662 introspection, RFC 7009 revocation, the client_credentials grant, OpenID Connect
userinfo and RFC 8414 metadata. Clients, users and fixed tokens come from a YAML file
(``config/devserver.example.yaml``); faults (latency, an HTTP status, a garbage body) can be set per
token in that file, or for every call with ``POST /admin/faults``.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote_plus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

DEFAULT_CONFIG: dict[str, Any] = {
    "clients": [{"client_id": "mockforge", "client_secret": "mockforge-dev-secret"},
                {"client_id": "demo-app", "client_secret": "demo-app-secret"}],
    "users": [{"sub": "user-42", "preferred_username": "ada", "email": "ada@example.test", "name": "Ada L."}],
    "tokens": [
        {"token": "demo-user-token", "client_id": "demo-app", "sub": "user-42", "scope": "openid email read write",
         "expires_in": 86400},
        {"token": "demo-machine-token", "client_id": "demo-app", "scope": "read", "expires_in": 86400},
        {"token": "demo-inactive-token", "client_id": "demo-app", "active": False},
        {"token": "demo-expired-token", "client_id": "demo-app", "sub": "user-42", "scope": "read",
         "expires_in": -60},
    ],
}


@dataclass
class Token:
    client_id: str
    scope: str = ""
    sub: str | None = None
    exp: int | None = None
    active: bool = True
    fault: dict[str, Any] = field(default_factory=dict)

    def is_active(self) -> bool:
        return self.active and (self.exp is None or self.exp > time.time())


class DevAuthServer:
    """The server's state and its Falcon resources."""

    def __init__(self, config: dict[str, Any] | None = None, issuer: str = "http://127.0.0.1") -> None:
        config = config or DEFAULT_CONFIG
        self.issuer = issuer
        self.clients = {c["client_id"]: str(c["client_secret"]) for c in config.get("clients", [])}
        self.users = {u["sub"]: dict(u) for u in config.get("users", [])}
        self.lock = threading.Lock()
        self.faults: dict[str, Any] = {}
        now = int(time.time())
        self.tokens: dict[str, Token] = {}
        for t in config.get("tokens", []):
            exp = now + int(t["expires_in"]) if "expires_in" in t else None
            self.tokens[t["token"]] = Token(t["client_id"], t.get("scope", ""), t.get("sub"), exp,
                                            t.get("active", True), t.get("fault") or {})

    # -- helpers ------------------------------------------------------------------------------------
    def _client(self, req: falcon.Request, form: dict[str, str]) -> str:
        scheme, _, value = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(value).decode().partition(":")
                client_id, secret = unquote_plus(client_id), unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                client_id, secret = "", ""
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        expected = self.clients.get(client_id)
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise falcon.HTTPError(falcon.HTTP_401, title="invalid_client",
                                   headers={"WWW-Authenticate": 'Basic realm="devserver"'})
        return client_id

    @staticmethod
    def _form(req: falcon.Request) -> dict[str, str]:
        form = req.get_media(default_when_empty={}) if req.content_length else {}
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def _fault(self, token: Token | None, resp: falcon.Response) -> bool:
        fault = {**self.faults, **(token.fault if token else {})}
        if fault.get("latency_ms"):
            time.sleep(float(fault["latency_ms"]) / 1000)
        if fault.get("status"):
            resp.status = int(fault["status"])
            resp.media = {"error": "injected_fault"}
            return True
        if fault.get("garbage"):
            resp.content_type = "text/html"
            resp.text = "<html><body>Please log in</body></html>"
            return True
        return False

    # -- endpoints ----------------------------------------------------------------------------------
    def on_get_metadata(self, req: falcon.Request, resp: falcon.Response) -> None:
        base = self.issuer
        resp.media = {"issuer": base, "token_endpoint": f"{base}/token",
                      "introspection_endpoint": f"{base}/introspect", "revocation_endpoint": f"{base}/revoke",
                      "userinfo_endpoint": f"{base}/userinfo", "grant_types_supported": ["client_credentials"],
                      "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                      "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def on_post_token(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = self._form(req)
        client_id = self._client(req, form)
        if form.get("grant_type") != "client_credentials":
            raise falcon.HTTPError(falcon.HTTP_400, title="unsupported_grant_type")
        value = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[value] = Token(client_id, form.get("scope", ""), None, int(time.time()) + 3600)
        resp.media = {"access_token": value, "token_type": "Bearer", "expires_in": 3600,
                      "scope": form.get("scope", "")}

    def on_post_introspect(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = self._form(req)
        self._client(req, form)
        token = self.tokens.get(form.get("token", ""))
        if self._fault(token, resp):
            return
        if token is None or not token.is_active():
            resp.media = {"active": False}
            return
        claims: dict[str, Any] = {"active": True, "client_id": token.client_id, "token_type": "Bearer",
                                  "iss": self.issuer}
        for key, value in (("scope", token.scope or None), ("sub", token.sub), ("exp", token.exp)):
            if value is not None:
                claims[key] = value
        if token.sub and "preferred_username" in self.users.get(token.sub, {}):
            claims["username"] = self.users[token.sub]["preferred_username"]
        resp.media = claims

    def on_post_revoke(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = self._form(req)
        client_id = self._client(req, form)
        with self.lock:
            token = self.tokens.get(form.get("token", ""))
            if token is not None and token.client_id == client_id:
                token.active = False
        resp.status = falcon.HTTP_200

    def on_get_userinfo(self, req: falcon.Request, resp: falcon.Response) -> None:
        scheme, _, value = (req.get_header("Authorization") or "").partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if self._fault(token, resp):
            return
        if token is None or not token.is_active() or token.sub is None or token.sub not in self.users:
            raise falcon.HTTPError(falcon.HTTP_401, title="invalid_token",
                                   headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        resp.media = self.users[token.sub]

    def on_post_faults(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``{"latency_ms": 50, "status": 503, "garbage": true}`` for every call; ``{}`` clears."""
        faults = req.get_media()
        self.faults = faults if isinstance(faults, dict) else {}
        resp.media = {"faults": self.faults}

    def app(self) -> falcon.App:
        app = falcon.App()
        app.add_route("/.well-known/oauth-authorization-server", self, suffix="metadata")
        app.add_route("/.well-known/openid-configuration", self, suffix="metadata")
        app.add_route("/token", self, suffix="token")
        app.add_route("/introspect", self, suffix="introspect")
        app.add_route("/revoke", self, suffix="revoke")
        app.add_route("/userinfo", self, suffix="userinfo")
        app.add_route("/admin/faults", self, suffix="faults")
        return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_devserver(config: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Any]:
    """Serve in a background thread; returns the base URL and the server (``.shutdown()`` stops it)."""
    server = make_server(host, port, falcon.App(), server_class=_ThreadingServer, handler_class=_QuietHandler)
    url = f"http://{host}:{server.server_port}"
    server.set_app(DevAuthServer(config, issuer=url).app())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return url, server


def run_devserver(args: list[str]) -> None:
    """``python -m falcon_oauth devserver [CONFIG.yaml]``: serve on DEVSERVER_HOST:DEVSERVER_PORT."""
    import os

    import yaml

    config = None
    if args:
        with open(args[0], encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    host, port = os.environ.get("DEVSERVER_HOST", "127.0.0.1"), int(os.environ.get("DEVSERVER_PORT", "9400"))
    url, server = start_devserver(config, host, port)
    print(f"DEVELOPMENT authorization server (not for production) on {url}", flush=True)
    print(f"  introspection {url}/introspect  userinfo {url}/userinfo  token {url}/token", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()

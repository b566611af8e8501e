"""A DEVELOPMENT authorization server, for demos and for MockForge users who need something to mock
against. Never use it in production, and this project's own integration tests never use it in place of
a real one (they run oidc-provider).

It speaks RFC 7662 introspection, RFC 7009 revocation, the client_credentials grant, OpenID Connect
userinfo and RFC 8414 metadata, at ``/introspect``, ``/revoke``, ``/token``, ``/userinfo`` and also under
``/oauth/`` (the plugin's default INTROSPECTION_ENDPOINT is ``/oauth/introspect``), so a plugin given only
its address and the development client's secret works. It publishes a JWKS at ``/jwks`` and issues RFC 9068
JWT access tokens (``typ: at+jwt``, RS256, audience ``JWT_AUDIENCE``) for a client_credentials request with
``resource=JWT_AUDIENCE``. Clients, users and fixed tokens come from a YAML file
(``config/devserver.example.yaml``); faults (latency, an HTTP status, a garbage body) can be set per token in
that file, or for every call with ``POST /admin/faults`` from this machine (loopback) only.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote_plus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

JWT_AUDIENCE = "https://mockforge.local"  # the audience of its JWT access tokens (RFC 8707 ``resource``)
DEV_CLIENT = ("mockforge", "mockforge-dev-secret")  # the plugin's default OAUTH_CLIENT_ID, and its secret here
DEFAULT_CONFIG: dict[str, Any] = {
    "clients": [{"client_id": DEV_CLIENT[0], "client_secret": DEV_CLIENT[1]},
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
        from joserfc.jwk import RSAKey  # its signing key: made at start, never stored

        config = config or DEFAULT_CONFIG
        self.issuer = issuer
        self.signing_key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig",
                                                                   "alg": "RS256"})
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

    def jwt_access_token(self, client_id: str, scope: str, sub: str | None = None, expires_in: int = 3600) -> str:
        """An RFC 9068 JWT access token for ``JWT_AUDIENCE``, signed with this server's key."""
        import json

        from joserfc import jws

        now = int(time.time())
        claims = {"iss": self.issuer, "aud": JWT_AUDIENCE, "sub": sub or client_id, "client_id": client_id,
                  "scope": scope, "iat": now, "exp": now + expires_in, "jti": secrets.token_urlsafe(16)}
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.signing_key.kid}
        return jws.serialize_compact(header, json.dumps(claims), self.signing_key)

    # -- endpoints ----------------------------------------------------------------------------------
    def on_get_jwks(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"keys": [self.signing_key.as_dict(private=False)]}
        resp.set_header("Cache-Control", "max-age=300")

    def on_get_metadata(self, req: falcon.Request, resp: falcon.Response) -> None:
        base = self.issuer
        resp.media = {"issuer": base, "token_endpoint": f"{base}/token",
                      "introspection_endpoint": f"{base}/introspect", "revocation_endpoint": f"{base}/revoke",
                      "userinfo_endpoint": f"{base}/userinfo", "jwks_uri": f"{base}/jwks",
                      "grant_types_supported": ["client_credentials"],
                      "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                      "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def on_post_token(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = self._form(req)
        client_id = self._client(req, form)
        if form.get("grant_type") != "client_credentials":
            raise falcon.HTTPError(falcon.HTTP_400, title="unsupported_grant_type")
        if form.get("resource") not in (None, JWT_AUDIENCE):
            raise falcon.HTTPError(falcon.HTTP_400, title="invalid_target")
        if form.get("resource") == JWT_AUDIENCE:
            value = self.jwt_access_token(client_id, form.get("scope", ""))
        else:
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
                                  "iss": self.issuer, "aud": JWT_AUDIENCE}  # one resource server: MockForge
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
        """``{"latency_ms": 50, "status": 503, "garbage": true}`` for every call; ``{}`` clears. Only a client
        on this machine may switch faults (the address of the connection; forwarding headers are not read)."""
        if not _is_loopback(req.remote_addr):
            raise falcon.HTTPForbidden(title="faults can be switched from loopback only")
        faults = req.get_media()
        self.faults = faults if isinstance(faults, dict) else {}
        resp.media = {"faults": self.faults}

    def app(self) -> falcon.App:
        app = falcon.App()
        app.add_route("/.well-known/oauth-authorization-server", self, suffix="metadata")
        app.add_route("/.well-known/openid-configuration", self, suffix="metadata")
        for name in ("token", "introspect", "revoke", "userinfo", "jwks"):
            app.add_route(f"/{name}", self, suffix=name)
            app.add_route(f"/oauth/{name}", self, suffix=name)
        app.add_route("/admin/faults", self, suffix="faults")
        return app


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_devserver(config: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Any]:
    """Serve in a background thread; returns the base URL and the server (``.shutdown()`` stops it;
    ``.authorization_server`` is the ``DevAuthServer``)."""
    server = make_server(host, port, falcon.App(), server_class=_ThreadingServer, handler_class=_QuietHandler)
    url = f"http://{host}:{server.server_port}"
    server.authorization_server = DevAuthServer(config, issuer=url)
    server.set_app(server.authorization_server.app())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return url, server


def read_config(path: str) -> dict[str, Any]:
    """The server's YAML file; a problem with it exits 2 with one line."""
    import yaml

    from falcon_oauth.__main__ import fail

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except OSError as error:
        raise fail(f"devserver: cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError:
        raise fail(f"devserver: {path} is not valid YAML") from None
    needs = {"clients": ("client_id", "client_secret"), "users": ("sub",), "tokens": ("token", "client_id")}
    if not isinstance(config, dict) or not all(
            isinstance(config.get(kind, []), list)
            and all(isinstance(entry, dict) and all(k in entry for k in keys) for entry in config.get(kind, []))
            for kind, keys in needs.items()) or not config.get("clients"):
        raise fail(f"devserver: {path} must hold a list of clients (client_id, client_secret) and may hold "
                   "users (sub) and tokens (token, client_id): see config/devserver.example.yaml")
    return config


def plugin_client(config: dict[str, Any] | None) -> tuple[str, str]:
    """The client the plugin should use: ``mockforge`` (its default OAUTH_CLIENT_ID) when there is one."""
    clients = [(str(c["client_id"]), str(c["client_secret"])) for c in (config or DEFAULT_CONFIG)["clients"]]
    return next((c for c in clients if c[0] == DEV_CLIENT[0]), clients[0])


def run_devserver(path: str | None = None) -> None:
    """``falcon-oauth devserver [CONFIG.yaml]``: serve on DEVSERVER_HOST:DEVSERVER_PORT (127.0.0.1:9400)."""
    import os

    from falcon_oauth.__main__ import fail

    config = read_config(path) if path else None
    host, port = os.environ.get("DEVSERVER_HOST", "127.0.0.1"), os.environ.get("DEVSERVER_PORT", "9400")
    try:
        url, server = start_devserver(config, host, int(port))
    except ValueError:
        raise fail(f"devserver: DEVSERVER_PORT must be a port number, not {port!r}") from None
    except OSError as error:
        raise fail(f"devserver: cannot listen on {host}:{port}: {error.strerror or error} "
                   "(set DEVSERVER_PORT to another port)") from None
    client_id, secret = plugin_client(config)
    print(f"DEVELOPMENT authorization server (not for production) on {url}\n"
          f"  introspection {url}/oauth/introspect (also /introspect), userinfo {url}/userinfo, token {url}/token,\n"
          f"  JWKS {url}/jwks (JWT access tokens: client_credentials with resource={JWT_AUDIENCE})\n"
          f"  run the plugin against it with:\n"
          f"  AUTH_SERVER_URL={url} OAUTH_CLIENT_ID={client_id} OAUTH_CLIENT_SECRET={secret} falcon-oauth",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()

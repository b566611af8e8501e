"""``falcon-oauth demo``: the plugin on embedded defaults, wired to the built-in development authorization
server, with curl commands that show every kind of answer, each labelled with the answer it gets."""

from __future__ import annotations

import os

from falcon_oauth.__main__ import listen, serve, settings_or_exit
from falcon_oauth.devserver import DEV_CLIENT, JWT_AUDIENCE, start_devserver

SDK = '{"credentials": {"type": "bearer", "token": "%s"}}'
HOST = ('{"context": {"plugin_id": "auth-python-oauth", "request_id": "demo-1"}, "method": "GET", '
        '"uri": "/api/users", "query_params": {"access_token": "%s"}}')

# (what the command sends, its body, the token, the answer it gets: "authenticated" or the rejection reason)
EXAMPLES = (
    ("SDK dialect, a user's token, with userinfo claims", SDK, "demo-user-token", "authenticated"),
    ("host dialect, a machine token", HOST, "demo-machine-token", "authenticated"),
    ("SDK dialect, an inactive (revoked) token", SDK, "demo-inactive-token", "token_inactive"),
    # token_expired is for an exp that passes while a verdict is cached, or a server reporting a past exp
    ("host dialect, an expired token (past its exp a server answers active=false, RFC 7662)", HOST,
     "demo-expired-token", "token_inactive"),
    ("SDK dialect, no token at all", '{"credentials": {"type": "bearer"}}', None, "missing_token"),
)


def curl_commands(plugin: str, jwt: str) -> str:
    """The demo's banner. Every ``curl`` line follows a ``#`` line ending in ``→ <the answer it gets>``."""
    lines = ["", "falcon-oauth demo: ready. Try it (each command is one line):", ""]
    examples = (*EXAMPLES, ("host dialect, a JWT access token, verified locally with the server's JWKS (no "
                            "introspection)", HOST, jwt, "authenticated"))
    for what, body, token, answer in examples:
        data = body % token if token else body
        label = "authenticated" if answer == "authenticated" else f"rejected: {answer}"
        lines += [f"# {what} → {label}",
                  f"curl -s -X POST {plugin}/plugin/authenticate -H 'Content-Type: application/json' -d '{data}'",
                  ""]
    lines += ["# liveness → 200", f"curl -s {plugin}/health", "",
              "# readiness: the authorization server answers → 200", f"curl -s {plugin}/health/ready", "",
              "Stop with Ctrl-C. The authorization server here is a DEVELOPMENT server; point AUTH_SERVER_URL",
              "at your own to run the plugin for real (see README.md).", ""]
    return "\n".join(lines)


def run_demo(host: str = "127.0.0.1") -> None:
    """The plugin on ``host`` (loopback unless told otherwise) and PORT (default 8080)."""
    as_url, server = start_devserver()
    jwt = server.authorization_server.jwt_access_token("demo-app", "read write", sub="user-42", expires_in=86400)
    # Only PORT and LOG_LEVEL are read from the environment: settings meant for a real deployment (a plugin
    # key, routes, another endpoint) would change the answers the banner promises.
    environ = {key: os.environ[key] for key in ("PORT", "LOG_LEVEL") if key in os.environ}
    settings = settings_or_exit(environ, auth_server_url=as_url, userinfo_endpoint="/userinfo",
                                oauth_client_id=DEV_CLIENT[0], oauth_client_secret=DEV_CLIENT[1], host=host,
                                jwt_validation=True, jwks_uri="/jwks", audiences=JWT_AUDIENCE)
    sock = listen(settings.host, settings.port)  # a taken port ends here, in one line, before "ready"
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(curl_commands(f"http://{shown}:{settings.port}", jwt), flush=True)
    serve(settings, sock)

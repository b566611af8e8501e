"""``python -m falcon_oauth demo``: the plugin on embedded defaults, wired to the built-in development
authorization server, with curl commands that show every kind of answer."""

from __future__ import annotations

import os

from falcon_oauth.__main__ import serve, settings_or_exit
from falcon_oauth.devserver import DEFAULT_CONFIG, start_devserver


def curl_commands(plugin: str) -> str:
    sdk = '{"credentials": {"type": "bearer", "token": "%s"}}'
    host = ('{"context": {"plugin_id": "auth-python-oauth", "request_id": "demo-1"}, "method": "GET", '
            '"uri": "/api/users", "query_params": {"access_token": "%s"}}')
    lines = ["", "falcon-oauth demo: the plugin is ready. Try it (each command is one line):", ""]
    for label, body, token in (
        ("SDK dialect, a user's token (authenticated, with userinfo claims)", sdk, "demo-user-token"),
        ("host dialect, a machine token (authenticated)", host, "demo-machine-token"),
        ("SDK dialect, an inactive token (rejected: token_inactive)", sdk, "demo-inactive-token"),
        ("host dialect, an expired token (rejected)", host, "demo-expired-token"),
        ("SDK dialect, no token at all (rejected: missing_token)", '{"credentials": {"type": "bearer"}}', None),
    ):
        data = body % token if token else body
        lines += [f"# {label}",
                  f"curl -s -X POST {plugin}/plugin/authenticate -H 'Content-Type: application/json' -d '{data}'",
                  ""]
    lines += ["# liveness and readiness", f"curl -s {plugin}/health; echo; curl -s {plugin}/health/ready", "",
              "Stop with Ctrl-C. The authorization server here is a DEVELOPMENT server; point AUTH_SERVER_URL",
              "at your own to run the plugin for real (see README.md).", ""]
    return "\n".join(lines)


def run_demo() -> None:
    as_url, _ = start_devserver()
    mockforge = next(c for c in DEFAULT_CONFIG["clients"] if c["client_id"] == "mockforge")
    settings = settings_or_exit(
        auth_server_url=as_url, introspection_endpoint="/introspect", userinfo_endpoint="/userinfo",
        oauth_client_id=mockforge["client_id"], oauth_client_secret=mockforge["client_secret"],
        host=os.environ.get("HOST", "127.0.0.1"), port=os.environ.get("PORT", "8080"), cache_backend="memory")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(curl_commands(f"http://{host}:{settings.port}"), flush=True)
    serve(settings)

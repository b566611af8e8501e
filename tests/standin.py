"""A stand-in authorization server on loopback that counts introspection calls per token and can answer
slowly: for herd, cache and benchmark runs where the count matters (oidc-provider cannot report it).

Tokens starting with ``inactive`` are inactive; ``fault-500`` get a 500, ``fault-html`` a login page,
``fault-slow`` an answer after ``slow_seconds``; the rest are active for an hour unless ``answers`` says
otherwise. A real HTTP server, not a mock: the plugin's own client, pool and timeouts are exercised.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class StandIn:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.slow_seconds = 3.0
        self.calls: Counter[str] = Counter()
        self.connections = 0  # TCP connections accepted
        self.open_connections = 0  # of which the client has not closed yet
        self.answers: dict[str, dict[str, Any]] = {}
        self.paths: Counter[str] = Counter()  # introspection calls by path
        self.metadata: dict[str, Any] | None = None  # served as RFC 8414 metadata when set
        self.active = 0  # introspection calls under way now
        self.most_active = 0  # ... and the most there ever were at once
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:  # once per connection; its requests follow in handle()
                super().setup()
                with standin._lock:
                    standin.connections += 1
                    standin.open_connections += 1

            def finish(self) -> None:  # the connection ended
                super().finish()
                with standin._lock:
                    standin.open_connections -= 1

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                token = form.get("token", [""])[0]
                with standin._lock:
                    standin.calls[token] += 1
                    standin.paths[self.path] += 1
                    standin.active += 1
                    standin.most_active = max(standin.most_active, standin.active)
                try:
                    if standin.delay or token.startswith("fault-slow"):
                        time.sleep(standin.slow_seconds if token.startswith("fault-slow") else standin.delay)
                finally:
                    with standin._lock:
                        standin.active -= 1
                status, content_type, body = 200, "application/json", json.dumps(standin.answer(token)).encode()
                if token.startswith("fault-500"):
                    status, body = 500, b'{"error": "server_error"}'
                elif token.startswith("fault-html"):
                    content_type, body = "text/html", b"<html><form>Log in</form></html>"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                found = standin.metadata is not None and self.path == "/.well-known/oauth-authorization-server"
                body = json.dumps(standin.metadata if found else {}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # listen()'s backlog: the default 5 drops connections under load
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that gave up (a timeout under test)
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, token: str) -> dict[str, Any]:
        if token in self.answers:
            return self.answers[token]
        if token.startswith("inactive"):
            return {"active": False}
        return {"active": True, "sub": "user-1", "scope": "read", "exp": int(time.time()) + 3600}

    def environ(self, **extra: str) -> dict[str, str]:
        return {"AUTH_SERVER_URL": self.url, "INTROSPECTION_ENDPOINT": "/introspect",
                "OAUTH_CLIENT_SECRET": "standin-secret", **extra}

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

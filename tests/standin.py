"""A stand-in authorization server on loopback that counts introspection calls per token and can answer
slowly: for herd, cache and benchmark runs where the count matters (oidc-provider cannot report it).

Tokens starting with ``inactive`` are inactive; the rest are active for an hour unless ``answers`` says
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
        self.calls: Counter[str] = Counter()
        self.answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                token = form.get("token", [""])[0]
                with standin._lock:
                    standin.calls[token] += 1
                if standin.delay:
                    time.sleep(standin.delay)
                body = json.dumps(standin.answer(token)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 512
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

"""An authorization server that answers from a function, for faults a real server cannot be made to
produce. It is an httpx transport, usable by the sync and the async client alike."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from falcon_oauth.settings import Settings, load_settings


class FakeAuthServer(httpx.MockTransport):
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = handler or (lambda request: active())

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.answer(request)

        super().__init__(record)

    @property
    def calls(self) -> int:
        return len(self.requests)


def active(**claims: object) -> httpx.Response:
    return httpx.Response(200, json={"active": True, "sub": "user-1", "scope": "read", **claims})


def inactive() -> httpx.Response:
    return httpx.Response(200, json={"active": False})


def fake_settings(**extra: str) -> Settings:
    env = {"AUTH_SERVER_URL": "http://auth.invalid", "OAUTH_CLIENT_SECRET": "fake-secret"}
    env.update(extra)
    return load_settings(env)


def sdk_body(token: str) -> str:
    return json.dumps({"credentials": {"type": "bearer", "token": token}})

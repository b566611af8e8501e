"""The introspection flow's own guarantees, in both modes: rediscovery that replaces discovered endpoints,
stale-if-error, and the bounds on the authorization server (call slots, retry budget, circuit breaker).
Time moves by injected clocks, not sleeps."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import httpx
import pytest
from prometheus_client import REGISTRY

from falcon_oauth.app import create_app
from falcon_oauth.discovery import discover_at_start
from falcon_oauth.settings import load_settings
from tests.conftest import host_body
from tests.fakes import FakeAuthServer, fake_settings, sdk_body


class Clock:
    """Wall time and monotonic time, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    @property
    def clocks(self) -> dict:
        return {"clock": self.wall, "monotonic": self.monotonic}


def ask(client, token: str) -> tuple[int, dict]:
    answer = client.simulate_post("/plugin/authenticate", json=host_body(token))
    return answer.status_code, answer.json


def many(app, asgi: bool, tokens: list[str]) -> list[tuple[int, dict]]:
    """All at once: threads for WSGI, one event loop for ASGI."""
    if asgi:
        async def run():
            async with falcon.testing.ASGIConductor(app) as conductor:
                return await asyncio.gather(*(conductor.simulate_post("/plugin/authenticate", json=host_body(t))
                                              for t in tokens))
        return [(r.status_code, r.json) for r in asyncio.run(run())]
    client = falcon.testing.TestClient(app)
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        return list(pool.map(lambda t: ask(client, t), tokens))


# -- rediscovery ----------------------------------------------------------------------------------------

def test_a_refresh_sends_the_next_miss_to_the_endpoint_the_metadata_names_now(make_client, standin):
    standin.metadata = {"issuer": standin.url, "introspection_endpoint": f"{standin.url}/v1/introspect"}
    settings = discover_at_start(load_settings(standin.environ(OIDC_DISCOVERY="true", INTROSPECTION_ENDPOINT="",
                                                               DISCOVERY_REFRESH_SECONDS="60")))
    clock = Clock()
    client = make_client(settings, **clock.clocks)
    assert ask(client, "good-before")[1]["authenticated"]
    standin.metadata["introspection_endpoint"] = f"{standin.url}/v2/introspect"
    clock.advance(30)
    assert ask(client, "good-early")[1]["authenticated"]  # not yet due: the old endpoint still
    assert standin.paths == {"/v1/introspect": 2}
    clock.advance(31)
    assert ask(client, "good-after")[1]["authenticated"]
    assert standin.paths["/v2/introspect"] == 1 and standin.paths["/v1/introspect"] == 2


def test_an_endpoint_the_operator_set_survives_every_refresh(make_client, standin):
    standin.metadata = {"issuer": standin.url, "introspection_endpoint": f"{standin.url}/v1/introspect"}
    settings = discover_at_start(load_settings(standin.environ(OIDC_DISCOVERY="true", INTROSPECTION_ENDPOINT="/mine",
                                                               DISCOVERY_REFRESH_SECONDS="60")))
    clock = Clock()
    client = make_client(settings, **clock.clocks)
    standin.metadata["introspection_endpoint"] = f"{standin.url}/v2/introspect"
    clock.advance(61)
    assert ask(client, "good-mine")[1]["authenticated"]
    assert standin.paths == {"/mine": 1}


def test_a_failed_refresh_keeps_the_endpoints_known(make_client, standin):
    standin.metadata = {"issuer": standin.url, "introspection_endpoint": f"{standin.url}/v1/introspect"}
    settings = discover_at_start(load_settings(standin.environ(OIDC_DISCOVERY="true", INTROSPECTION_ENDPOINT="",
                                                               DISCOVERY_REFRESH_SECONDS="60")))
    clock = Clock()
    client = make_client(settings, **clock.clocks)
    standin.metadata = None  # the metadata is gone (404)
    clock.advance(61)
    assert ask(client, "good-kept")[1]["authenticated"]
    assert standin.paths == {"/v1/introspect": 1}


# -- stale-if-error ---------------------------------------------------------------------------------------

class Switchable(FakeAuthServer):
    """Answers active (with ``exp``) until told to fail with 503, or to say inactive."""

    def __init__(self, exp: float) -> None:
        self.mode = "active"
        super().__init__(lambda request: self._answer(request))
        self.exp = exp

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.mode == "down":
            return httpx.Response(503, json={"error": "temporarily_unavailable"})
        if self.mode == "inactive":
            return httpx.Response(200, json={"active": False})
        return httpx.Response(200, json={"active": True, "sub": "user-1", "scope": "read", "exp": self.exp})


def stale_served() -> float:
    return REGISTRY.get_sample_value("falcon_oauth_stale_served_total") or 0.0


def test_a_stale_verdict_stands_in_while_the_server_fails_and_never_after(make_client):
    clock = Clock()
    server = Switchable(exp=clock.now + 3600)
    client = make_client(fake_settings(CACHE_TTL="10", CACHE_STALE_IF_ERROR="60", AUTH_SERVER_RETRIES="0"),
                         server, **clock.clocks)
    assert ask(client, "tok")[1]["metadata"] == {"cache": "miss"}
    server.mode = "down"
    clock.advance(11)
    before = stale_served()
    status, body = ask(client, "tok")
    assert status == 200 and body["authenticated"] and body["metadata"] == {"cache": "stale"}
    assert stale_served() == before + 1
    sdk = client.simulate_post("/plugin/authenticate", body=sdk_body("tok"),
                               headers={"Content-Type": "application/json"}).json
    assert sdk["result"]["authenticated"] and sdk["result"]["claims"]["falcon_oauth_stale"] is True
    assert ask(client, "never-seen")[0] == 503  # nothing to stand in
    clock.advance(60)
    assert ask(client, "tok")[0] == 503  # the stale window is over
    server.mode = "inactive"  # the server is back, and the token was revoked meanwhile
    assert ask(client, "tok")[1]["error_message"] == "token_inactive"
    server.mode = "down"
    clock.advance(11)
    assert ask(client, "tok")[0] == 503  # the old active entry is never used again


def test_a_stale_verdict_never_reaches_past_exp(make_client):
    clock = Clock()
    server = Switchable(exp=clock.now + 15)
    client = make_client(fake_settings(CACHE_TTL="10", CACHE_STALE_IF_ERROR="600", AUTH_SERVER_RETRIES="0",
                                       CLOCK_SKEW_SECONDS="0"), server, **clock.clocks)
    assert ask(client, "tok")[1]["authenticated"]
    server.mode = "down"
    clock.advance(12)
    assert ask(client, "tok")[1]["metadata"] == {"cache": "stale"}
    clock.advance(4)
    assert ask(client, "tok")[0] == 503


def test_stale_if_error_is_off_by_default(make_client):
    clock = Clock()
    server = Switchable(exp=clock.now + 3600)
    client = make_client(fake_settings(CACHE_TTL="10", AUTH_SERVER_RETRIES="0"), server, **clock.clocks)
    ask(client, "tok")
    server.mode = "down"
    clock.advance(11)
    assert ask(client, "tok")[0] == 503


# -- bounds on the authorization server ------------------------------------------------------------------

def test_no_more_calls_at_once_than_auth_server_max_inflight(standin, asgi):
    standin.delay = 0.2
    app = create_app(load_settings(standin.environ(AUTH_SERVER_MAX_INFLIGHT="3")), asgi=asgi)
    answers = many(app, asgi, [f"good-{i}" for i in range(12)])
    assert all(status == 200 and body["authenticated"] for status, body in answers)
    assert standin.most_active == 3


def test_a_call_that_finds_no_slot_in_time_is_busy_and_never_reaches_the_server(standin, asgi):
    """One slot, held by a slow call: a second call that may wait 0.3 s for it comes back Busy (the flow
    answers 503 for it) without reaching the server. Driven as the app drives it, each driver in its own way."""
    from falcon_oauth.core import introspection_request
    from falcon_oauth.drivers import AsyncDriver, SyncDriver
    from falcon_oauth.effects import Busy, Http, Response

    settings = load_settings(standin.environ(AUTH_SERVER_MAX_INFLIGHT="1"))
    standin.slow_seconds = 1.0

    def call(token: str, timeout: float):
        return (yield Http(introspection_request(settings.introspection_url, "mockforge", "s",
                                                 "client_secret_basic", token), timeout))

    if asgi:
        driver = AsyncDriver(settings)

        async def run():
            slow = asyncio.ensure_future(driver.run(call("fault-slow", 3.0)))
            while not standin.active:
                await asyncio.sleep(0.01)
            late = await driver.run(call("good-late", 0.3))
            return late, await slow
        late, slow = asyncio.run(run())
    else:
        driver = SyncDriver(settings)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(driver.run, call("fault-slow", 3.0))
            while not standin.active:
                time.sleep(0.01)
            late = driver.run(call("good-late", 0.3))
            slow = pending.result()
    assert isinstance(late, Busy) and standin.calls["good-late"] == 0
    assert isinstance(slow, Response) and slow.status == 200


def test_retries_stay_within_the_budget_when_the_server_fails(make_client):
    server = FakeAuthServer(lambda request: httpx.Response(503))
    client = make_client(fake_settings(AUTH_SERVER_RETRIES="1", AUTH_SERVER_BREAKER_FAILURES="0"), server)
    assert all(ask(client, f"token-{i}")[0] == 503 for i in range(100))
    assert 100 <= server.calls <= 120


def test_the_breaker_opens_answers_misses_at_once_then_lets_one_probe_decide(make_client):
    clock = Clock()
    server = FakeAuthServer(lambda request: httpx.Response(503))
    client = make_client(fake_settings(AUTH_SERVER_RETRIES="0", AUTH_SERVER_BREAKER_FAILURES="3",
                                       AUTH_SERVER_BREAKER_SECONDS="5"), server, **clock.clocks)
    for i in range(3):
        assert ask(client, f"down-{i}")[0] == 503
    assert server.calls == 3
    status, body = ask(client, "while-open")
    assert (status, body["error_message"]) == (503, "auth_server_unavailable") and server.calls == 3
    assert client.simulate_get("/health/ready").json["breaker"] == "open"
    assert REGISTRY.get_sample_value("falcon_oauth_breaker_state") == 2
    clock.advance(5)
    assert ask(client, "probe-fails")[0] == 503 and server.calls == 4  # the one probe, and it failed
    assert ask(client, "still-open")[0] == 503 and server.calls == 4
    clock.advance(5)
    server.answer = lambda request: httpx.Response(200, json={"active": True, "sub": "u"})
    assert ask(client, "probe-works")[1]["authenticated"] and server.calls == 5
    assert ask(client, "closed-again")[1]["authenticated"] and server.calls == 6
    assert client.simulate_get("/health/ready").json["breaker"] == "closed"


def test_cache_hits_pass_while_the_breaker_is_open(make_client):
    clock = Clock()
    server = FakeAuthServer(lambda request: httpx.Response(200, json={"active": True, "sub": "u"}))
    client = make_client(fake_settings(AUTH_SERVER_RETRIES="0", AUTH_SERVER_BREAKER_FAILURES="2"), server,
                         **clock.clocks)
    assert ask(client, "cached")[1]["authenticated"]
    server.answer = lambda request: httpx.Response(500)
    ask(client, "down-1")
    ask(client, "down-2")
    assert ask(client, "new")[0] == 503
    status, body = ask(client, "cached")
    assert status == 200 and body["metadata"] == {"cache": "hit"}


@pytest.mark.parametrize("setting", ["AUTH_SERVER_MAX_INFLIGHT=0", "AUTH_SERVER_BREAKER_FAILURES=-1",
                                     "AUTH_SERVER_BREAKER_SECONDS=0", "CACHE_STALE_IF_ERROR=-5",
                                     "CACHE_LOCAL_TTL=61", "CACHE_BACKEND=redis REDIS_URL=http://x"])
def test_bad_bounds_are_refused_at_start(setting):
    from falcon_oauth.settings import SettingsError

    env = dict(pair.split("=", 1) for pair in setting.split())
    with pytest.raises(SettingsError) as error:
        fake_settings(**env)
    assert error.value.key == list(env)[-1]

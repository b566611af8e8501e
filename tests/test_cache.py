"""The verdict cache, with a real memcached: hits, lifetimes, one call per token per instance and per
cluster, outages, purging, and what is stored (never a token)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import pytest

from falcon_oauth.app import create_app
from falcon_oauth.cache import KEY_FORMAT
from falcon_oauth.core import Introspected
from falcon_oauth.settings import load_settings
from tests.conftest import API_KEY, PLUGIN_CLIENT, CacheClient, ask, host_body, memcached_dump


@pytest.fixture(params=["memory", pytest.param("memcached", marks=pytest.mark.integration)])
def backend(request) -> dict[str, str]:
    """The cache settings of each backend; memcached is a real server started for the test."""
    if request.param == "memory":
        return {"CACHE_BACKEND": "memory"}
    server = request.getfixturevalue("memcached")
    return {"CACHE_BACKEND": "memcached", "MEMCACHED_SERVERS": server.server}


def test_second_request_is_a_hit(make_client, standin, backend):
    client = make_client(load_settings(standin.environ(**backend)))
    first, second = ask(client, "good-1"), ask(client, "good-1")
    assert first["authenticated"] and second["authenticated"]
    assert (first["metadata"], second["metadata"]) == ({"cache": "miss"}, {"cache": "hit"})
    assert standin.calls["good-1"] == 1


def test_a_cached_verdict_never_outlives_its_token(make_client, standin, backend):
    now = [time.time()]
    client = make_client(load_settings(standin.environ(CLOCK_SKEW_SECONDS="0", **backend)), clock=lambda: now[0])
    standin.answers["short-1"] = {"active": True, "sub": "u", "exp": int(now[0]) + 2}
    assert ask(client, "short-1")["authenticated"] is True
    assert ask(client, "short-1")["metadata"] == {"cache": "hit"}
    now[0] += 2.5
    later = ask(client, "short-1")
    assert later["authenticated"] is False and later["error_message"] == "token_expired"


def test_inactive_verdicts_live_cache_negative_ttl(make_client, standin, backend):
    now = [time.time()]
    client = make_client(load_settings(standin.environ(CACHE_NEGATIVE_TTL="1", **backend)), clock=lambda: now[0])
    assert [ask(client, "inactive-1")["metadata"]["cache"] for _ in range(2)] == ["miss", "hit"]
    now[0] += 1.2
    assert ask(client, "inactive-1")["metadata"]["cache"] == "miss"
    assert standin.calls["inactive-1"] == 2


def test_negative_ttl_zero_caches_no_rejection(make_client, standin, backend):
    client = make_client(load_settings(standin.environ(CACHE_NEGATIVE_TTL="0", **backend)))
    ask(client, "inactive-2"), ask(client, "inactive-2")
    assert standin.calls["inactive-2"] == 2


def test_purge_one_token_and_all(make_client, standin, backend):
    client = make_client(load_settings(standin.environ(PLUGIN_API_KEY=API_KEY, **backend)))
    headers = {"X-API-Key": API_KEY}

    def ask_keyed(token):
        return client.simulate_post("/plugin/authenticate", json=host_body(token), headers=headers).json

    ask_keyed("good-a"), ask_keyed("good-b")
    assert client.simulate_post("/plugin/cache/purge", json={"token": "good-a"}, headers=headers).status_code == 200
    assert ask_keyed("good-a")["metadata"]["cache"] == "miss"
    assert ask_keyed("good-b")["metadata"]["cache"] == "hit"
    assert client.simulate_post("/plugin/cache/purge", json={"all": True}, headers=headers).status_code == 200
    assert ask_keyed("good-a")["metadata"]["cache"] == "miss"
    assert ask_keyed("good-b")["metadata"]["cache"] == "miss"


def test_purge_says_so_when_memcached_cannot_be_told(make_client, standin, memcached):
    client = make_client(load_settings(standin.environ(PLUGIN_API_KEY=API_KEY, CACHE_BACKEND="memcached",
                                                      MEMCACHED_SERVERS=memcached.server)))
    headers = {"X-API-Key": API_KEY}
    memcached.kill()
    for body in ({"token": "good-p"}, {"all": True}):
        result = client.simulate_post("/plugin/cache/purge", json=body, headers=headers)
        assert result.status_code == 503 and result.json["error"] == "cache_unavailable"
        assert result.headers["Retry-After"] == "5"


def test_null_backend_caches_nothing(make_client, standin):
    client = make_client(load_settings(standin.environ(CACHE_BACKEND="null")))
    assert [ask(client, "good-n")["metadata"]["cache"] for _ in range(2)] == ["miss", "miss"]


# -- one call per token ---------------------------------------------------------------------------------

def herd_wsgi(app, token: str, n: int) -> list[dict]:
    client = falcon.testing.TestClient(app)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: ask(client, token), range(n)))


async def herd_asgi(app, token: str, n: int) -> list[dict]:
    async with falcon.testing.ASGIConductor(app) as conductor:
        results = await asyncio.gather(*(conductor.simulate_post("/plugin/authenticate", json=host_body(token))
                                         for _ in range(n)))
    return [r.json for r in results]


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_200_concurrent_requests_for_a_new_token_make_one_call(standin, backend, asgi):
    standin.delay = 0.3
    app = create_app(load_settings(standin.environ(**backend)), asgi=asgi)
    results = asyncio.run(herd_asgi(app, "good-herd", 200)) if asgi else herd_wsgi(app, "good-herd", 200)
    assert all(r["authenticated"] for r in results) and len(results) == 200
    assert standin.calls["good-herd"] == 1


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_concurrent_waiters_share_an_undecided_outcome_too(standin, asgi):
    standin.delay = 0.3
    standin.answers["good-broken"] = {"no": "active"}
    app = create_app(load_settings(standin.environ()), asgi=asgi)
    if asgi:
        async def run():
            async with falcon.testing.ASGIConductor(app) as conductor:
                return await asyncio.gather(*(conductor.simulate_post(
                    "/plugin/authenticate", json=host_body("good-broken")) for _ in range(50)))
        statuses = [r.status_code for r in asyncio.run(run())]
    else:
        client = falcon.testing.TestClient(app)
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(lambda _: client.simulate_post(
                "/plugin/authenticate", json=host_body("good-broken")).status_code, range(50)))
    assert statuses == [503] * 50
    assert standin.calls["good-broken"] == 1


def test_an_asgi_and_a_wsgi_instance_sharing_memcached_make_one_call(standin, memcached):
    standin.delay = 0.3
    env = standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server)
    wsgi_app = create_app(load_settings(env), asgi=False)
    asgi_app = create_app(load_settings(env), asgi=True)
    wsgi_results: list[dict] = []
    thread = threading.Thread(target=lambda: wsgi_results.extend(herd_wsgi(wsgi_app, "good-cluster", 100)))
    thread.start()
    asgi_results = asyncio.run(herd_asgi(asgi_app, "good-cluster", 100))
    thread.join()
    assert all(r["authenticated"] for r in wsgi_results + asgi_results)
    assert len(wsgi_results + asgi_results) == 200
    assert standin.calls["good-cluster"] == 1


# -- when memcached fails -------------------------------------------------------------------------------

def test_memcached_killed_and_restarted_fails_no_request(make_client, standin, memcached):
    client = make_client(load_settings(standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server,
                                                      CACHE_LOCAL_TTL="0")))  # every lookup reaches memcached
    assert ask(client, "good-k")["metadata"]["cache"] == "miss"
    memcached.kill()
    for _ in range(5):
        answer = ask(client, "good-k")
        assert answer["authenticated"] is True and answer["metadata"] == {"cache": "miss"}
    ready = client.simulate_get("/health/ready")
    assert ready.status_code == 200 and ready.json["cache"]["state"] == "degraded"
    memcached.start()  # same port, empty
    deadline = time.monotonic() + 10
    caches = []
    while time.monotonic() < deadline and caches[-2:] != ["miss", "hit"]:
        caches.append(ask(client, "good-k")["metadata"]["cache"])
        time.sleep(0.3)
    assert caches[-2:] == ["miss", "hit"], caches  # used again without a restart of the plugin


class HungMemcached:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.server = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_hung_memcached_cannot_hang_a_request(make_client, standin):
    hung = HungMemcached()
    try:
        client = make_client(load_settings(standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=hung.server,
                                                          MEMCACHED_TIMEOUT="0.2")))
        for _ in range(3):
            started = time.monotonic()
            answer = ask(client, "good-h")
            assert answer["authenticated"] is True
            assert time.monotonic() - started < 2.0
        ready = client.simulate_get("/health/ready").json
        assert ready["cache"]["errors"] > 0
    finally:
        hung.close()


# -- what is stored -------------------------------------------------------------------------------------

def test_memcached_holds_no_token_no_claim_and_no_secret(make_client, authserver, memcached):
    """Claims from introspection and userinfo, read raw from memcached, keys and values alike."""
    token = authserver.user_token("user-42", "openid email profile read")
    client = make_client(authserver.settings(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server,
                                             USERINFO_ENDPOINT="/me"))
    claims = ask(client, token)["claims"]
    assert (claims["sub"], claims["email"], claims["name"]) == ("user-42", "ada@example.test", "Ada L.")
    pairs = memcached_dump(memcached.server)
    entries = [(k, v) for k, v in pairs if not k.startswith("_lock")]
    assert len(entries) == 1
    key, reply = entries[0]
    assert key.startswith("fo4:") and len(key) <= 250
    for text in (token, "user-42", "ada@example.test", "Ada L.", "read", "mockforge", PLUGIN_CLIENT[1],
                 '"record"', '"active"'):
        assert all(text not in k and text.encode() not in v for k, v in pairs), text


def test_keys_are_bound_to_the_secret_and_to_what_changes_a_verdict(standin):
    base = load_settings(standin.environ(CACHE_KEY_SECRET="a-cache-key-secret"))
    key = CacheClient(base).key("tok")
    assert "tok" not in key and key.startswith(f"{KEY_FORMAT}:")
    assert CacheClient(base).key("tok") == key
    assert CacheClient(base.replace(oauth_client_secret="rotated")).key("tok") == key  # the secret is set
    changes = [{"cache_key_secret": "another-secret"}, {"cache_key_secret": "not-utf-8-\udcff"},
               {"introspection_endpoint": "/other"},
               {"userinfo_endpoint": "/userinfo"}, {"userinfo_required": True, "userinfo_endpoint": "/userinfo"},
               {"oauth_client_id": "another-client"}, {"client_auth_method": "client_secret_post"},
               {"client_auth_method": "bearer", "token_endpoint": "/token"},
               {"client_auth_method": "bearer", "token_endpoint": "/token", "token_scope": "introspect"},
               {"client_auth_method": "bearer", "token_endpoint": "/token", "token_audience": "api"},
               {"jwt_validation": True, "jwks_uri": "/jwks", "audiences": ("api",)},
               {"jwt_validation": True, "jwks_uri": "/jwks", "audiences": ("api",), "jwt_require_typ": False},
               {"jwt_validation": True, "jwks_uri": "/jwks", "audiences": ("api",), "jwt_algorithms": ("ES256",)},
               {"jwt_validation": True, "jwks_uri": "/other-jwks", "audiences": ("api",)}]
    keys = {CacheClient(base.replace(**change)).key("tok") for change in changes}
    assert len(keys) == len(changes) and key not in keys
    unset = base.replace(cache_key_secret=None)  # the fallback secret: the client credentials
    assert CacheClient(unset.replace(oauth_client_secret="rotated")).key("tok") != CacheClient(unset).key("tok")


def test_a_value_that_fails_to_decode_is_a_miss(standin, memcached):
    cache = CacheClient(load_settings(standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server,
                                                      CACHE_LOCAL_TTL="0")))
    cache.set("tok", Introspected(True, {"sub": "u"}))
    assert cache.get("tok") == Introspected(True, {"sub": "u"})
    cache.store.region.actual_backend.client.set(cache.key("tok"), b"\x80garbage")
    assert cache.get("tok") is None
    cache.store.set(cache.key("tok"), {"unexpected": 1})  # sealed, so it opens: its shape is still checked
    assert cache.get("tok") is None


def test_the_memory_cache_is_bounded(standin):
    cache = CacheClient(load_settings(standin.environ(CACHE_MAX_ENTRIES="50")))
    for i in range(1000):
        cache.set(f"token-{i}", Introspected(True, {"sub": f"u{i}"}))
    assert len(cache.cache.local) == 50
    assert cache.get("token-999") is not None and cache.get("token-0") is None

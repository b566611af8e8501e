"""Redis as the shared tier (``CACHE_BACKEND=redis``), against a real redis-server: one call per token across
instances, sealed values, purges, the L1 bound, and outages. Every HTTP-level test runs in both modes."""

from __future__ import annotations

import asyncio
import threading
import time

import falcon.testing
import redis as redis_py
from prometheus_client import REGISTRY

from falcon_oauth.app import create_app
from falcon_oauth.settings import load_settings
from tests.conftest import API_KEY, ask, host_body


def environ(standin, server, **extra: str) -> dict[str, str]:
    return standin.environ(CACHE_BACKEND="redis", REDIS_URL=server.url, **extra)


def dump(server) -> dict[bytes, bytes]:
    client = redis_py.Redis.from_url(server.url)
    return {key: client.get(key) for key in client.keys("*") if client.type(key) == b"string"}


def test_instances_sharing_redis_ask_once_per_token(standin, redis):
    standin.delay = 0.3
    env = environ(standin, redis)
    apps = [create_app(load_settings(env), asgi=False), create_app(load_settings(env), asgi=True)]
    results: list[dict] = []

    def wsgi_herd() -> None:
        client = falcon.testing.TestClient(apps[0])
        threads = [threading.Thread(target=lambda: results.append(ask(client, "good-redis"))) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    async def asgi_herd() -> list[dict]:
        async with falcon.testing.ASGIConductor(apps[1]) as conductor:
            answers = await asyncio.gather(*(conductor.simulate_post("/plugin/authenticate",
                                                                     json=host_body("good-redis"))
                                             for _ in range(30)))
        return [a.json for a in answers]

    thread = threading.Thread(target=wsgi_herd)
    thread.start()
    results.extend(asyncio.run(asgi_herd()))
    thread.join()
    assert len(results) == 60 and all(r["authenticated"] for r in results)
    assert standin.calls["good-redis"] == 1


def test_redis_holds_no_token_and_no_claim(make_client, standin, redis):
    standin.answers["good-secret"] = {"active": True, "sub": "user-42", "email": "ada@example.test",
                                      "exp": int(time.time()) + 600}
    client = make_client(load_settings(environ(standin, redis)))
    assert ask(client, "good-secret")["claims"]["email"] == "ada@example.test"
    entries = dump(redis)
    assert entries
    for key, value in entries.items():
        for text in (b"good-secret", b"user-42", b"ada@example.test", b'"active"'):
            assert text not in key and text not in value


def test_a_forged_redis_value_is_a_miss(make_client, standin, redis):
    client = make_client(load_settings(environ(standin, redis, CACHE_LOCAL_TTL="0")))
    ask(client, "inactive-forged")
    writer = redis_py.Redis.from_url(redis.url)
    before = REGISTRY.get_sample_value("falcon_oauth_cache_rejected_values_total") or 0.0
    for key in dump(redis):
        writer.set(key, b'{"record": {"active": true, "claims": {"sub": "admin"}, "reason": null}}')
    answer = ask(client, "inactive-forged")
    assert answer["authenticated"] is False and answer["metadata"] == {"cache": "miss"}
    assert REGISTRY.get_sample_value("falcon_oauth_cache_rejected_values_total") > before


def test_l1_keeps_an_entry_at_most_cache_local_ttl(make_client, standin, redis):
    """A peer's purge deletes the shared entry; this instance's own tier still answers it for at most
    CACHE_LOCAL_TTL seconds, then asks again."""
    now = [time.time()]
    client = make_client(load_settings(environ(standin, redis, CACHE_LOCAL_TTL="2")), clock=lambda: now[0])
    assert ask(client, "good-l1")["metadata"] == {"cache": "miss"}
    redis_py.Redis.from_url(redis.url).flushdb()  # what a purge at another instance leaves behind
    now[0] += 1.9
    assert ask(client, "good-l1")["metadata"] == {"cache": "hit"}
    now[0] += 0.2
    assert ask(client, "good-l1")["metadata"] == {"cache": "miss"}
    assert standin.calls["good-l1"] == 2


def test_a_purge_through_redis(make_client, standin, redis):
    client = make_client(load_settings(environ(standin, redis, PLUGIN_API_KEY=API_KEY)))
    headers = {"X-API-Key": API_KEY}

    def cache_of(token: str) -> str:
        return client.simulate_post("/plugin/authenticate", json=host_body(token), headers=headers).json[
            "metadata"]["cache"]

    assert cache_of("good-p") == "miss"
    assert client.simulate_post("/plugin/cache/purge", json={"token": "good-p"}, headers=headers).status_code == 200
    assert cache_of("good-p") == "miss"
    assert client.simulate_post("/plugin/cache/purge", json={"all": True}, headers=headers).status_code == 200
    assert cache_of("good-p") == "miss"
    assert standin.calls["good-p"] == 3
    redis.kill()
    answer = client.simulate_post("/plugin/cache/purge", json={"all": True}, headers=headers)
    assert answer.status_code == 503 and answer.json["error"] == "cache_unavailable"


def test_redis_killed_and_restarted_fails_no_request(make_client, standin, redis):
    client = make_client(load_settings(environ(standin, redis, CACHE_LOCAL_TTL="0")))
    assert ask(client, "good-k")["metadata"] == {"cache": "miss"}
    redis.kill()
    for _ in range(3):
        answer = ask(client, "good-k")
        assert answer["authenticated"] is True and answer["metadata"] == {"cache": "miss"}
    ready = client.simulate_get("/health/ready")
    assert ready.status_code == 200 and ready.json["cache"] == {"backend": "redis", "state": "degraded",
                                                                "errors": ready.json["cache"]["errors"]}
    redis.start()  # same port, empty
    deadline = time.monotonic() + 10
    caches: list[str] = []
    while time.monotonic() < deadline and caches[-2:] != ["miss", "hit"]:
        caches.append(ask(client, "good-k")["metadata"]["cache"])
        time.sleep(0.2)
    assert caches[-2:] == ["miss", "hit"], caches

"""Attacks on the verdict cache by someone who can read and write memcached: planted pickles, forged,
altered and transplanted values, lifetimes beyond the configured bounds, secret rotation, and
configurations that must not share entries. A real memcached, written to over its own text protocol as an
attacker would; every HTTP-level test runs against both app kinds."""

from __future__ import annotations

import builtins
import json
import logging
import pickle
import socket
import time

import pymemcache.serde
import pytest
from prometheus_client import REGISTRY

from falcon_oauth.core import Introspected
from falcon_oauth.settings import load_settings
from tests.conftest import CacheClient, ask, memcached_dump


def rejected_values() -> float:
    return REGISTRY.get_sample_value("falcon_oauth_cache_rejected_values_total") or 0.0


def raw(server: str, command: bytes) -> bytes:
    """One command over memcached's text protocol, its whole reply."""
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(command)
        reply = b""
        while not reply.endswith((b"END\r\n", b"STORED\r\n")):
            reply += sock.recv(65536)
    return reply


def plant(server: str, key: str, value: bytes, flags: int = 0) -> None:
    assert raw(server, b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), flags, len(value), value)) == b"STORED\r\n"


def read(server: str, key: str) -> bytes:
    """The value memcached holds under ``key``, as stored."""
    reply = raw(server, b"get %s\r\n" % key.encode())
    header, _, rest = reply.partition(b"\r\n")
    length = int(header.split()[3])
    return rest[:length]


class RunsCode:
    """Unpickled, it creates a file: the side effect that shows code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


@pytest.fixture()
def environ(standin, memcached):
    # CACHE_LOCAL_TTL=0: every lookup reads memcached, where the attacker writes (L1 is this process's own)
    return standin.environ(CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server, CACHE_LOCAL_TTL="0")


def test_a_planted_pickle_runs_nothing_and_the_server_is_asked(make_client, standin, memcached, environ, tmp_path):
    settings = load_settings(environ)
    client = make_client(settings)
    proof, target = tmp_path / "pickle-ran-in-the-test", tmp_path / "pickle-ran-in-the-plugin"
    pymemcache.serde.pickle_serde.deserialize(b"k", pickle.dumps(RunsCode(str(proof))), pymemcache.serde.FLAG_PICKLE)
    assert proof.exists()  # the payload is live: pymemcache's default serde runs it
    before = rejected_values()
    plant(memcached.server, CacheClient(settings).key("inactive-pickle"), pickle.dumps(RunsCode(str(target))),
          flags=pymemcache.serde.FLAG_PICKLE)
    answer = ask(client, "inactive-pickle")
    assert not target.exists()
    assert answer["authenticated"] is False and answer["error_message"] == "token_inactive"
    assert answer["metadata"] == {"cache": "miss"} and standin.calls["inactive-pickle"] == 1
    assert rejected_values() == before + 1


def test_plain_json_claiming_active_is_rejected(make_client, standin, memcached, environ):
    """A value in the shape the plugin wrote before values were sealed, for a token the server says is
    inactive."""
    settings = load_settings(environ)
    client = make_client(settings)
    now = time.time()
    forged = b'{"ct": %f, "v": 2}|' % now + json.dumps({
        "record": {"active": True, "claims": {"sub": "mallory", "scope": "read write admin"}, "reason": None},
        "expires_at": now + 3600, "stored_at": now}).encode()
    before = rejected_values()
    plant(memcached.server, CacheClient(settings).key("inactive-forged"), forged)
    answer = ask(client, "inactive-forged")
    assert answer["authenticated"] is False and answer["identity"] is None
    assert answer["metadata"] == {"cache": "miss"} and standin.calls["inactive-forged"] == 1
    assert rejected_values() == before + 1


def test_a_sealed_value_copied_to_another_tokens_key_is_a_miss(make_client, standin, memcached, environ):
    settings = load_settings(environ)
    client = make_client(settings)
    cache = CacheClient(settings)
    assert ask(client, "good-original")["authenticated"] is True
    sealed = read(memcached.server, cache.key("good-original"))
    before = rejected_values()
    plant(memcached.server, cache.key("inactive-victim"), sealed)
    answer = ask(client, "inactive-victim")
    assert answer["authenticated"] is False and answer["metadata"] == {"cache": "miss"}
    assert standin.calls["inactive-victim"] == 1 and rejected_values() == before + 1
    assert ask(client, "good-original")["metadata"] == {"cache": "hit"}  # the original is untouched


def test_a_sealed_value_with_a_flipped_byte_is_a_miss(make_client, standin, memcached, environ):
    settings = load_settings(environ)
    client = make_client(settings)
    key = CacheClient(settings).key("good-flipped")
    ask(client, "good-flipped")
    sealed = read(memcached.server, key)
    for position in (0, 15, 16, len(sealed) // 2, len(sealed) - 1):  # salt, ciphertext, tag
        before, calls = rejected_values(), standin.calls["good-flipped"]
        altered = bytearray(sealed)
        altered[position] ^= 0x01
        plant(memcached.server, key, bytes(altered))
        assert ask(client, "good-flipped")["metadata"] == {"cache": "miss"}, position
        assert standin.calls["good-flipped"] == calls + 1 and rejected_values() == before + 1
        plant(memcached.server, key, sealed[:position])  # truncated
        assert ask(client, "good-flipped")["metadata"] == {"cache": "miss"}, position


def test_rejected_values_are_counted_each_and_logged_once_a_minute(standin, memcached, environ, caplog):
    cache = CacheClient(load_settings(environ))
    before = rejected_values()
    with caplog.at_level(logging.WARNING, logger="falcon_oauth.cache"):
        for i in range(5):
            plant(memcached.server, cache.key(f"forged-{i}"), b"not sealed by the plugin %d" % i)
            assert cache.get(f"forged-{i}") is None
    assert rejected_values() == before + 5
    lines = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
    assert len(lines) == 1
    assert not any(cache.key(f"forged-{i}") in lines[0] or "not sealed" in lines[0] for i in range(5))


def test_a_value_never_outlives_the_configured_bounds(standin, memcached, environ):
    """However long a sealed value says it lives (a peer with a longer CACHE_TTL, or a value written with an
    absurd fresh_until), this instance keeps it at most CACHE_TTL (inactive: CACHE_NEGATIVE_TTL) from when it
    was stored."""
    now = [1_000_000.0]
    settings = load_settings({**environ, "CACHE_TTL": "60", "CACHE_NEGATIVE_TTL": "5"})
    cache = CacheClient(settings, clock=lambda: now[0])
    active, inactive = Introspected(True, {"sub": "u"}), Introspected(False, {}, "token_inactive")
    for token, record in (("active", active), ("inactive", inactive)):
        cache.store.set(cache.key(token), {"record": record.to_json(), "fresh_until": 1e12, "stale_until": 1e12,
                                           "stored_at": now[0]})
    peer = CacheClient(settings.replace(cache_ttl=86400), clock=lambda: now[0])
    peer.set("peer", active)
    now[0] += 4.9
    assert (cache.get("active"), cache.get("inactive"), cache.get("peer")) == (active, inactive, active)
    now[0] += 0.2
    assert cache.get("inactive") is None and cache.get("active") == active
    now[0] += 55
    assert cache.get("active") is None and cache.get("peer") is None
    assert peer.get("peer") == active  # the peer's own bound is its business


def test_rotating_cache_key_secret_turns_old_entries_into_misses(make_client, standin, memcached, environ):
    old = load_settings({**environ, "CACHE_KEY_SECRET": "the-old-cache-key-secret"})
    new = old.replace(cache_key_secret="the-new-cache-key-secret")
    before_rotation, after_rotation = make_client(old), make_client(new)
    assert [ask(before_rotation, "good-rotated")["metadata"]["cache"] for _ in range(2)] == ["miss", "hit"]
    assert [ask(after_rotation, "good-rotated")["metadata"]["cache"] for _ in range(2)] == ["miss", "hit"]
    assert standin.calls["good-rotated"] == 2
    # a value sealed under the old secret, moved under the new key, does not open either
    before = rejected_values()
    plant(memcached.server, CacheClient(new).key("inactive-rotated"),
          read(memcached.server, CacheClient(old).key("good-rotated")))
    assert ask(after_rotation, "inactive-rotated")["authenticated"] is False
    assert rejected_values() == before + 1


@pytest.mark.parametrize("difference", [
    {"USERINFO_ENDPOINT": "/me"},
    {"USERINFO_REQUIRED": "true"},
    {"OAUTH_CLIENT_ID": "mockforge-post", "OAUTH_CLIENT_SECRET": "post-secret",
     "CLIENT_AUTH_METHOD": "client_secret_post"},
], ids=["userinfo", "userinfo-required", "client-id"])
def test_configurations_that_differ_never_share_entries(make_client, authserver, memcached, difference):
    """Two instances on one memcached with one CACHE_KEY_SECRET, differing in one setting that changes a
    verdict: neither answers from the other's entry."""
    common = {"CACHE_BACKEND": "memcached", "MEMCACHED_SERVERS": memcached.server,
              "CACHE_KEY_SECRET": "one-secret-for-both-instances", "USERINFO_ENDPOINT": "/me"}
    if "USERINFO_ENDPOINT" in difference:
        del common["USERINFO_ENDPOINT"]
    first = make_client(authserver.settings(**common))
    second = make_client(authserver.settings(**{**common, **difference}))
    token = authserver.user_token("user-7", "openid email profile read")
    assert [ask(first, token)["metadata"]["cache"] for _ in range(2)] == ["miss", "hit"]
    assert [ask(second, token)["metadata"]["cache"] for _ in range(2)] == ["miss", "hit"]
    entries = [key for key, _ in memcached_dump(memcached.server) if key.startswith("fo4:")]
    assert len(entries) == 2

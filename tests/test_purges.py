"""What a purge reaches: every worker process of an instance with the memory cache (real gunicorn and
uvicorn servers with several workers, a real authorization server: revoke, purge, and no worker
authenticates the token again), and every instance sharing memcached."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from falcon_oauth.core import Introspected
from falcon_oauth.purges import RING
from falcon_oauth.settings import load_settings
from tests.conftest import API_KEY, CacheClient, host_body, start, stop

WORKERS = 4
SERVERS = {  # every way the README runs several workers
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app"],
    "gunicorn-preload": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                         "--preload"],
    "gunicorn-uvicorn-worker": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
                                "-k", "uvicorn_worker.UvicornWorker", "asgi:app"],
    "uvicorn-workers": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}",
                        "--workers", str(WORKERS)],
}


def ask_a_worker(url: str, token: str) -> tuple[str, dict]:
    """One request on a connection of its own (so any worker may take it): which worker answered (the
    process prefix of the request id it made) and its answer."""
    answer = httpx.post(f"{url}/plugin/authenticate", json=host_body(token), headers={"X-API-Key": API_KEY},
                        timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Request-ID"][:16], answer.json()


def ask_many(url: str, token: str, n: int = 8) -> list[tuple[str, dict]]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: ask_a_worker(url, token), range(n)))


def answers_of_every_worker(url: str, token: str, deadline: float = 60) -> dict[str, list[dict]]:
    """Asks until each worker has answered at least once: the answers by worker. The deadline bounds how long
    the kernel takes to spread connections over the workers."""
    answers: dict[str, list[dict]] = {}
    end = time.monotonic() + deadline
    while len(answers) < WORKERS:
        assert time.monotonic() < end, f"only {len(answers)} of {WORKERS} workers answered"
        for worker, answer in ask_many(url, token):
            answers.setdefault(worker, []).append(answer)
    assert len(answers) == WORKERS
    return answers


@pytest.mark.parametrize("purge", [{"token": None}, {"all": True}], ids=["token", "all"])
@pytest.mark.parametrize("server", list(SERVERS))
def test_a_purge_reaches_every_worker(authserver, server, purge, tmp_path):
    env = authserver.environ(PLUGIN_API_KEY=API_KEY, CACHE_BACKEND="memory", WEB_CONCURRENCY=str(WORKERS),
                             GUNICORN_THREADS="4", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    process, url = start(SERVERS[server], env)
    try:
        token = authserver.token("read")
        warm = answers_of_every_worker(url, token)
        assert all(answer["authenticated"] for answers in warm.values() for answer in answers)
        authserver.revoke(token)
        stale = ask_many(url, token)  # what a purge is for: each worker still holds the revoked token's verdict
        assert all(answer["authenticated"] and answer["metadata"] == {"cache": "hit"} for _, answer in stale)

        body = {"token": token} if "token" in purge else purge
        purged = httpx.post(f"{url}/plugin/cache/purge", json=body, headers={"X-API-Key": API_KEY}, timeout=10)
        assert purged.status_code == 200

        after = answers_of_every_worker(url, token)  # every request sent after the purge's answer
        for worker, answers in after.items():
            assert all(a["authenticated"] is False and a["error_message"] == "token_inactive" for a in answers)
            # the worker dropped its entry and asked the authorization server (then kept the inactive verdict)
            assert {"cache": "miss"} in [a["metadata"] for a in answers], worker
    finally:
        stop(process)
    assert "Traceback" not in process.output()


# -- the mechanism, between caches of one process (as between workers) ----------------------------------

@pytest.fixture()
def two_workers(standin):
    """Two memory caches of one configuration under one parent process: what two workers of an instance are."""
    settings = load_settings(standin.environ(CACHE_BACKEND="memory"))
    return CacheClient(settings), CacheClient(settings)


def test_purging_one_token_spares_the_others(two_workers):
    one, other = two_workers
    record = Introspected(True, {"sub": "u"})
    for cache in (one, other):
        cache.set("purged", record)
        cache.set("kept", record)
    assert one.delete("purged")
    assert (other.get("purged"), other.get("kept")) == (None, record)
    assert (one.get("purged"), one.get("kept")) == (None, record)
    assert one.clear()
    assert (other.get("kept"), one.get("kept")) == (None, None)


def test_a_worker_far_behind_drops_everything(two_workers):
    """More token purges than the ring holds since a worker last looked: it cannot know which, so it drops all."""
    one, other = two_workers
    record = Introspected(True, {"sub": "u"})
    other.set("kept", record)
    for i in range(RING):
        one.delete(f"purged-{i}")
    assert other.get("kept") is None


def test_other_configurations_are_not_purged(standin):
    settings = load_settings(standin.environ(CACHE_BACKEND="memory"))
    one, other = CacheClient(settings), CacheClient(settings.replace(oauth_client_id="another-client"))
    other.set("kept", Introspected(True, {"sub": "u"}))
    one.clear()
    assert other.get("kept") is not None


@pytest.mark.parametrize("planted", ["open-to-all", "symlink"])
def test_a_directory_someone_else_could_use_is_refused(standin, tmp_path, monkeypatch, caplog, planted):
    """The shared file's directory must be this user's own and private: one open to everybody, or a link
    planted in its place, is not used; purges then stay in this process, and a WARNING says so."""
    directory = tmp_path / f"falcon-oauth-{os.getuid()}"
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir()
        directory.symlink_to(tmp_path / "elsewhere")
    else:
        directory.mkdir(mode=0o777)
        directory.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where this process keeps temporary files
    with caplog.at_level(logging.WARNING, logger="falcon_oauth.cache"):
        cache = CacheClient(load_settings(standin.environ(CACHE_BACKEND="memory")))
    assert "reach only the process that receives them" in caplog.text
    assert not any(path.name.startswith("purges-") for path in tmp_path.rglob("*"))
    cache.set("purged", Introspected(True, {"sub": "u"}))
    assert cache.delete("purged") and cache.get("purged") is None


# -- memcached: every instance ----------------------------------------------------------------------------

def test_a_purge_reaches_every_instance_sharing_memcached(make_client, standin, memcached):
    env = standin.environ(PLUGIN_API_KEY=API_KEY, CACHE_BACKEND="memcached", MEMCACHED_SERVERS=memcached.server)
    here, there = make_client(load_settings(env)), make_client(load_settings(env))
    headers = {"X-API-Key": API_KEY}

    def cache_of(client, token):
        return client.simulate_post("/plugin/authenticate", json=host_body(token), headers=headers).json[
            "metadata"]["cache"]

    assert [cache_of(here, "good-1"), cache_of(there, "good-1"), cache_of(there, "good-2")] == ["miss", "hit", "miss"]
    assert here.simulate_post("/plugin/cache/purge", json={"token": "good-1"}, headers=headers).status_code == 200
    assert cache_of(there, "good-1") == "miss"  # one shared entry: gone for everyone at once
    assert here.simulate_post("/plugin/cache/purge", json={"all": True}, headers=headers).status_code == 200
    purged = time.monotonic()
    while cache_of(there, "good-2") == "hit":  # each instance reads the generation at most once a second
        assert time.monotonic() - purged < 1.5
        time.sleep(0.05)
    assert cache_of(there, "good-2") == "hit"  # filled again under the new generation

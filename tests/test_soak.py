"""A bounded soak (SOAK_SECONDS per server, default 30; loopback only; stops by itself): a mix of cached,
new, inactive and fault-injected tokens at the highest rate the machine allows, through uvicorn and
gunicorn. Never authenticated on a fault, no 5xx but 503, every answer right, RSS flat after warm-up."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import start, stop

pytestmark = pytest.mark.integration  # server processes

SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}",
                "--no-access-log"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                 "-b", "127.0.0.1:{port}", "--workers", "1", "--access-logfile", "/dev/null"],
}
CACHED = [f"good-cached-{i}" for i in range(20)]


def rss_mb(pid: int) -> float:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    status = Path(f"/proc/{children[0] if children else pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def pick(counter: itertools.count) -> tuple[str, str]:
    """A token and what its answer must be."""
    roll = random.random()
    if roll < 0.45:
        return random.choice(CACHED), "authenticated"
    if roll < 0.75:
        return f"good-new-{next(counter)}", "authenticated"
    if roll < 0.85:
        return f"inactive-{next(counter)}", "rejected"
    return f"{random.choice(['fault-500', 'fault-html', 'fault-slow'])}-{next(counter)}", "undecided"


async def soak(url: str, seconds: float, process_pid: int) -> tuple[Counter, list[str], list[float]]:
    outcomes: Counter = Counter()
    wrong: list[str] = []
    rss: list[float] = []
    counter = itertools.count()
    stop_at = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            token, expected = pick(counter)
            answer = await client.post("/plugin/authenticate", json={
                "context": {"plugin_id": "auth-python-oauth"}, "method": "GET", "uri": "/api",
                "query_params": {"access_token": token}})
            body = answer.json()
            got = ("undecided" if answer.status_code == 503 else
                   "authenticated" if body.get("authenticated") else "rejected")
            outcomes[(expected, answer.status_code)] += 1
            if got != expected or answer.status_code not in (200, 503):
                wrong.append(f"{token}: {answer.status_code} {body}")

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(seconds / 10)
            rss.append(rss_mb(process_pid))

    # A client must drop an idle connection before the server does, or a request can race the server's
    # close of it (a reset no server can prevent): 1 s here, under gunicorn's 5 s and uvicorn's 5 s.
    limits = httpx.Limits(max_connections=32, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
        await asyncio.gather(sample_rss(), *(client_loop(client) for _ in range(32)))
    return outcomes, wrong, rss


@pytest.mark.parametrize("server", list(SERVERS))
def test_soak(standin, server, tmp_path):
    # AUTH_SERVER_BREAKER_FAILURES=0: the faults here belong to tokens, not to the server, and a run of five
    # of them by chance would rightly open the breaker and answer good tokens 503 (tests/test_flow.py)
    env = standin.environ(AUTH_SERVER_TIMEOUT="1", CACHE_MAX_ENTRIES="500", CACHE_NEGATIVE_TTL="1",
                          LOG_LEVEL="WARNING", PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
                          AUTH_SERVER_BREAKER_FAILURES="0")
    standin.slow_seconds = 2.0  # past AUTH_SERVER_TIMEOUT
    process, url = start(SERVERS[server], env)
    try:
        outcomes, wrong, rss = asyncio.run(soak(url, SECONDS, process.pid))
        healthy = httpx.get(f"{url}/health", timeout=5).status_code
    finally:
        stop(process)
    total = sum(outcomes.values())
    assert wrong == [], wrong[:5]
    assert healthy == 200
    assert total > 20 * SECONDS  # the load was real
    assert outcomes[("undecided", 503)] > 0 and outcomes[("authenticated", 200)] > 0
    second_half = rss[len(rss) // 2:]  # the first half warms up: the cache fills, pools and arenas grow
    assert max(second_half) - min(second_half) < 3, f"RSS still grows after warm-up: {rss}"
    print(f"{server}: {total} requests in {SECONDS:.0f} s, {dict(outcomes)}, RSS MB {[round(r, 1) for r in rss]}")

"""SIGTERM with requests in flight, under uvicorn and gunicorn: the requests in flight complete, a request
on a new connection is not served (uvicorn refuses the connection; gunicorn's worker stops accepting and
the kernel's backlog is reset when it exits), and the process exits 0 within the grace period."""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import start, stop

pytestmark = pytest.mark.integration  # server processes

SERVERS = {
    "python-m": [sys.executable, "-m", "falcon_oauth"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                 "-b", "127.0.0.1:{port}", "--workers", "1", "--graceful-timeout", "15"],
}


def ask(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/plugin/authenticate", timeout=20,
                      json={"credentials": {"type": "bearer", "token": token}})


@pytest.mark.parametrize("server", list(SERVERS))
def test_sigterm_lets_requests_in_flight_finish(standin, server, tmp_path):
    standin.delay = 2.0  # every introspection takes 2 s, so requests are in flight when SIGTERM comes
    env = standin.environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    process, url = start(SERVERS[server], env)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(ask, url, f"good-inflight-{i}") for i in range(6)]
            deadline = time.monotonic() + 5
            while standin.total < 6 and time.monotonic() < deadline:  # all six reached the authorization server
                time.sleep(0.02)
            assert standin.total == 6
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.TransportError):
                ask(url, "good-too-late")
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 6
        assert standin.total == 6  # the late request never reached the authorization server
        assert all(a.json()["result"]["authenticated"] for a in answers)
        # uvicorn's own CLI dies by the signal it got, after its graceful shutdown (its choice, so a parent
        # sees why it ended); python -m falcon_oauth (the image's command) and gunicorn exit 0
        assert process.wait(timeout=20) == (-signal.SIGTERM if server == "uvicorn" else 0)
        assert time.monotonic() - sent < 15
    finally:
        stop(process)

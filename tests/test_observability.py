"""Metrics and logs: counted right (also summed over gunicorn workers), and never a token or a secret in
either, at DEBUG, in both app kinds and both dialects."""

from __future__ import annotations

import json
import re
import sys

import httpx
import pytest

from tests.conftest import contract, start, stop
from tests.fakes import FakeAuthServer, fake_settings, inactive

API_KEY = "observability-key-0123"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == want:
            return float(match.group(2))
    return 0.0


def test_metrics_count_outcomes_reasons_and_cache(make_client):
    fake = FakeAuthServer(lambda request: inactive() if b"token=inactive" in request.content else
                          httpx.Response(200, json={"active": True, "sub": "u"}))
    client = make_client(fake_settings(), fake)
    before = client.simulate_get("/metrics").text
    client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "good-metrics"))
    client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "good-metrics"))
    client.simulate_post("/plugin/authenticate", json=contract("host_request_query_token.json", "inactive-m"))
    result = client.simulate_get("/metrics")
    assert result.status_code == 200 and result.headers["Content-Type"].startswith("text/plain")
    after = result.text

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("falcon_oauth_auth_requests_total", dialect="sdk", outcome="authenticated") == 2
    assert delta("falcon_oauth_auth_requests_total", dialect="host", outcome="rejected") == 1
    assert delta("falcon_oauth_rejections_total", reason="token_inactive") == 1
    assert delta("falcon_oauth_cache_requests_total", result="hit") == 1
    assert delta("falcon_oauth_cache_requests_total", result="miss") == 2
    assert delta("falcon_oauth_introspection_duration_seconds_count") == 2
    assert "process_resident_memory_bytes" in after


def test_undecided_calls_are_counted_by_reason(make_client):
    client = make_client(fake_settings(), FakeAuthServer(lambda request: httpx.Response(502)))
    before = client.simulate_get("/metrics").text
    client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "good-502"))
    after = client.simulate_get("/metrics").text
    name, labels = "falcon_oauth_introspection_errors_total", {"reason": "auth_server_unavailable"}
    assert sample(after, name, **labels) - sample(before, name, **labels) == 1
    assert sample(after, "falcon_oauth_inflight_introspections") == 0


def test_metrics_can_require_the_key(make_client):
    client = make_client(fake_settings(PLUGIN_API_KEY=API_KEY, METRICS_REQUIRE_KEY="true"), FakeAuthServer())
    assert client.simulate_get("/metrics").status_code == 401
    assert client.simulate_get("/metrics", headers={"X-API-Key": API_KEY}).status_code == 200
    assert client.simulate_get("/health").status_code == 200


def test_request_id_comes_from_the_host_then_the_header_else_is_made(make_client):
    client = make_client(fake_settings(), FakeAuthServer())
    body = contract("host_request_query_token.json", "good")
    host = client.simulate_post("/plugin/authenticate", json=body)
    assert host.headers["X-Request-ID"] == body["context"]["request_id"]
    sdk = client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "good"),
                               headers={"X-Request-ID": "mockforge-req-7"})
    assert sdk.headers["X-Request-ID"] == "mockforge-req-7"
    forged = client.simulate_post("/plugin/authenticate", json=contract("sdk_request_valid.json", "good"),
                                  headers={"X-Request-ID": "evil\nline"})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Request-ID"])


SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}",
                "--log-config", "config/logging.json", "--log-level", "trace"],  # below DEBUG: uvicorn's most
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                 "-b", "127.0.0.1:{port}", "--workers", "1", "--log-level", "debug"],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_debug_traffic_leaves_no_token_or_secret_in_logs_or_metrics(authserver, server, tmp_path):
    env = authserver.environ(LOG_LEVEL="DEBUG", PLUGIN_API_KEY=API_KEY, USERINFO_ENDPOINT="/me",
                             CACHE_KEY_SECRET="cache-key-secret-value",
                             PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    process, url = start(SERVERS[server], env)
    user, machine, revoked = authserver.user_token(), authserver.token(), authserver.token()
    authserver.revoke(revoked)
    tokens = [user, machine, revoked, "made-up-token-value-123"]
    try:
        with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": API_KEY}) as client:
            for token in tokens:
                for request in ("sdk_request_valid.json", "sdk_request_header_token.json",
                                "host_request_query_token.json", "host_request_custom_token.json"):
                    assert client.post("/plugin/authenticate", json=contract(request, token)).status_code == 200
                bad = client.post("/plugin/authenticate", content=f'{{"credentials": {{"token": "{token}"',
                                  headers={"Content-Type": "application/json"})
                assert bad.status_code == 400 and token not in bad.text
                client.post(f"/plugin/authenticate?access_token={token}", json={"credentials": {}})
                client.post("/plugin/authenticate", json={"credentials": {"token": token}},
                            headers={"X-API-Key": "", "Authorization": f"Bearer {token}"})  # refused: 401
            metrics = client.get("/metrics").text
    finally:
        stop(process)
    logs = process.output()
    records = [json.loads(line) for line in logs.splitlines()]
    assert any(r.get("outcome") == "authenticated" for r in records)
    assert any(r["level"] in ("DEBUG", "TRACE") for r in records)  # the verbose levels really were on
    assert "falcon_oauth_auth_requests_total" in metrics
    for secret in [*tokens, API_KEY, authserver.environ()["OAUTH_CLIENT_SECRET"], "cache-key-secret-value"]:
        assert secret not in logs, f"{secret[:6]}... in the logs"
        assert secret not in metrics


def test_two_gunicorn_workers_report_the_sum(authserver, tmp_path):
    env = authserver.environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    process, url = start([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                          "-b", "127.0.0.1:{port}", "--workers", "2", "--threads", "2"], env)
    token = authserver.token()
    try:
        for _ in range(30):  # a new connection each time, so both workers answer
            with httpx.Client(base_url=url, timeout=10) as client:
                result = client.post("/plugin/authenticate", json=contract("sdk_request_valid.json", token))
                assert result.json()["result"]["authenticated"] is True
        with httpx.Client(base_url=url, timeout=10) as client:
            texts = [client.get("/metrics").text for _ in range(4)]
    finally:
        stop(process)
    deciding = {json.loads(line)["pid"] for line in process.output().splitlines()
                if json.loads(line).get("outcome") == "authenticated"}
    assert len(deciding) == 2  # both workers answered
    for text in texts:  # whichever worker answers /metrics, it reports every worker's count
        assert sample(text, "falcon_oauth_auth_requests_total", dialect="sdk", outcome="authenticated") == 30

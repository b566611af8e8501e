"""Prometheus metrics (prometheus-client). Labels carry only fixed vocabularies (dialect, outcome, reason
codes, hit/miss): never a token, a user id or free text. Under several gunicorn workers set
``PROMETHEUS_MULTIPROC_DIR`` (an existing, empty directory) before the workers start: ``/metrics`` then sums
every worker (the client's multiprocess mode).
"""

from __future__ import annotations

import functools
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the client writes there as soon as a metric exists
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

AUTH_REQUESTS = Counter("falcon_oauth_auth_requests", "Authentication requests by dialect and outcome "
                        "(authenticated, rejected, undecided)", ["dialect", "outcome"])
REJECTIONS = Counter("falcon_oauth_rejections", "Rejected tokens by reason code", ["reason"])
CACHE_REQUESTS = Counter("falcon_oauth_cache_requests", "Verdict cache lookups by result (hit, miss, stale)",
                         ["result"])
CACHE_ERRORS = Counter("falcon_oauth_cache_errors", "Cache backend faults (each answered from the "
                       "authorization server instead)")
CACHE_REJECTED = Counter("falcon_oauth_cache_rejected_values", "memcached values that failed authentication "
                         "(forged, altered or copied from another key), each read as a miss")
INTROSPECTION_DURATION = Histogram("falcon_oauth_introspection_duration_seconds",
                                   "Calls to the authorization server (introspection and userinfo)",
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INTROSPECTION_ERRORS = Counter("falcon_oauth_introspection_errors", "Calls to the authorization server "
                               "that could not decide, by reason code", ["reason"])
INFLIGHT = Gauge("falcon_oauth_inflight_introspections", "Calls to the authorization server under way",
                 multiprocess_mode="livesum")
BREAKER_STATE = Gauge("falcon_oauth_breaker_state", "The circuit breaker in front of the authorization server: "
                      "0 closed, 1 half-open (one probe call decides), 2 open (misses answered 503 at once)",
                      multiprocess_mode="livemax")
JWT_VERIFICATIONS = Counter("falcon_oauth_jwt_verifications", "JWT access tokens verified locally (no call to "
                            "the authorization server), by result (valid, rejected, unknown_key)", ["result"])
JWKS_FETCHES = Counter("falcon_oauth_jwks_fetches", "Fetches of the authorization server's JWKS by result (ok, failed)",
                       ["result"])
STALE_SERVED = Counter("falcon_oauth_stale_served", "Verdicts served from an entry past its cache lifetime "
                       "while the authorization server could not decide (CACHE_STALE_IF_ERROR)")


@functools.cache
def child(metric: Counter, *labels: str | None) -> Counter:
    """``metric.labels(*labels)``, looked up once per label set: the lookup costs more than the count."""
    return metric.labels(*labels)


def metrics_text() -> tuple[bytes, str]:
    """The exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


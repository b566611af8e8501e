"""The introspection flow, written once, sans-IO: a generator of effects, like httpx's ``Auth.auth_flow``.

``Flow.authenticate(raw, request_id)`` parses the plugin request, asks the two-tier cache
(``falcon_oauth.cache``), and on a miss introspects the token: the plugin's own service token when
``CLIENT_AUTH_METHOD=bearer`` (renewed once on a 401), introspection, then userinfo when configured. Whatever
needs I/O it *yields* as an effect — ``Http`` (one attempt at one request), ``Sleep``, and the cache's
``Shared`` / ``Join`` — and a driver (``falcon_oauth.drivers``, one sync, one async) performs it and sends
the result back. The state that outlives a request lives here: the service token, the retry budget, the
circuit breaker, readiness and the discovered endpoints. Clocks are passed in.

Bounds on the authorization server: at most ``AUTH_SERVER_MAX_INFLIGHT`` calls at once (the drivers hold the
slots: a call waits for one within its deadline); retries within a budget of 20 % of calls over a sliding
window; a circuit breaker that opens after ``AUTH_SERVER_BREAKER_FAILURES`` consecutive failures for
``AUTH_SERVER_BREAKER_SECONDS``, then lets one probe call decide.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Generator
from typing import Any

from falcon_oauth import core, jwt
from falcon_oauth import metrics as obs
from falcon_oauth.cache import MISS, STALE, VerdictCache
from falcon_oauth.core import Answer, HttpRequest, Introspected, PluginRequest, Undecided
from falcon_oauth.discovery import discovery
from falcon_oauth.effects import Busy, Effects, Http, Join, Response, Sleep
from falcon_oauth.logs import DecisionRecord, request_id
from falcon_oauth.settings import Settings, SettingsError

log = logging.getLogger("falcon_oauth")

PROBE_TOKEN = "falcon-oauth-readiness-probe"
READY_FRESH_SECONDS = 30.0  # an answer this recent makes the service ready without a probe
PROBE_INTERVAL_SECONDS = 5.0  # at most one readiness probe this often
SERVICE_TOKEN = "\0service-token"  # the Join key of the service token's fetch (no cache key looks like it)
JWKS = "\0jwks"  # ... and of the JWKS's fetch

class RetryBudget:
    """Retries allowed while they stay under ``ratio`` of the calls of the last ``window`` seconds, with
    ``minimum`` retries a window whatever the calls: the idea of Envoy's retry budgets (its
    ``budget_percent`` and ``min_retry_concurrency``), so a failing server never sees its load doubled while a
    quiet plugin still retries a lone failure. Counted in one-second buckets."""

    def __init__(self, clock: Callable[[], float], ratio: float = 0.2, window: int = 10, minimum: int = 3) -> None:
        self._clock = clock
        self._ratio = ratio
        self._window = window
        self._minimum = minimum
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(window)]  # [second, calls, retries]

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        bucket = self._buckets[second % self._window]
        if bucket[0] != second:
            bucket[:] = [second, 0, 0]
        return bucket

    def call(self) -> None:
        self._bucket()[1] += 1

    def allow_retry(self) -> bool:
        current = self._bucket()
        oldest = int(self._clock()) - self._window
        calls = sum(b[1] for b in self._buckets if b[0] > oldest)
        retries = sum(b[2] for b in self._buckets if b[0] > oldest)
        if retries + 1 > max(self._minimum, self._ratio * calls):
            return False
        current[2] += 1
        return True


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """Opens after ``failures`` consecutive failed calls (timeouts, connection errors, 5xx) for ``seconds``;
    then one probe call decides: a success closes it, a failure opens it again. ``failures`` 0 turns it off."""

    def __init__(self, failures: int, seconds: float, clock: Callable[[], float]) -> None:
        self._limit = failures
        self._seconds = seconds
        self._clock = clock
        self._failures = 0
        self._open_until = -math.inf
        self._probe_until = -math.inf  # a probe call is under way until then (its deadline at the latest)

    @property
    def state(self) -> str:
        if self._failures < self._limit or not self._limit:
            return CLOSED
        return OPEN if self._clock() < self._open_until else HALF_OPEN

    def admit(self, deadline: float) -> bool:
        """Whether a call may go out now; in half-open state only the one probe may."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self._clock() >= self._probe_until:
            self._probe_until = deadline
            return True
        return False

    def abandon(self) -> None:
        """The call admitted last never went out: a probe may go again."""
        self._probe_until = -math.inf

    def record(self, failed: bool) -> None:
        if not failed:
            self._failures, self._probe_until = 0, -math.inf
        else:
            self._failures += 1
            if self._limit and self._failures >= self._limit:
                self._open_until = self._clock() + self._seconds
                self._probe_until = -math.inf
        obs.BREAKER_STATE.set({CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[self.state])


class Flow:
    def __init__(self, settings: Settings, cache: VerdictCache, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings  # discovered endpoints included; those the operator set win (``operator``)
        self.operator = settings.operator()
        self.cache = cache
        self.policy = settings.policy
        self._clock, self._monotonic, self._random = clock, monotonic, rng
        self.budget = RetryBudget(monotonic)
        self.breaker = Breaker(settings.auth_server_breaker_failures, settings.auth_server_breaker_seconds,
                               monotonic)
        self.next_discovery = monotonic() + settings.discovery_refresh_seconds
        self.service_token: tuple[str, float] | None = None  # CLIENT_AUTH_METHOD=bearer: (token, use until)
        self.last_answer = -math.inf  # monotonic time of the last trustworthy introspection answer
        self.last_probe = -math.inf
        self.last_problem: str | None = None
        self.jwks: jwt.KeyRefresh | None = None  # JWT_VALIDATION: the JWKS and when to fetch it again
        if settings.jwt_validation:
            self.jwt_policy = jwt.JwtPolicy(settings.jwt_algorithms, settings.jwt_require_typ, settings.jwt_issuers,
                                            settings.audiences, settings.clock_skew_seconds).validated()
            self.jwks = jwt.KeyRefresh(settings.jwks_refresh_seconds, settings.jwks_min_refetch_seconds)

    # -- the plugin's endpoints ------------------------------------------------------------------------

    def authenticate(self, raw: bytes, header_request_id: str | None = None) -> Effects:
        """The answer to one plugin request (``core.BadRequest`` for an unusable one)."""
        started = time.perf_counter()
        request = core.parse_plugin_request(core.parse_body(raw), self.settings.token_max_length, self.policy)
        rid = request_id(request.request_id, header_request_id)
        if request.token is None:
            return self._answer(request, rid, None, None, started)
        upstream = time.perf_counter()
        try:
            record, source = yield from self.cache.get_or_fill(request.token, lambda: self._validate(request.token))
        except Undecided as error:
            self._report(request, rid, "undecided", error.code, None, MISS, started, upstream, error.detail)
            return core.render_undecided(request.dialect, error, {"X-Request-ID": rid})
        return self._answer(request, rid, record, source, started, upstream if source == MISS else None)

    def readiness(self) -> Effects:
        """Ready when the authorization server answered lately (else a probe, at most every few seconds), or,
        with JWT_VALIDATION, while JWKS keys are held. A cache outage degrades but stays ready: requests still
        succeed, from the authorization server."""
        if self._probe_due():
            try:
                yield from self._introspect(PROBE_TOKEN)
            except Undecided:
                pass
        if self.jwks is not None:
            yield from self._refresh_jwks()
        cache_ok, cache_errors = yield from self.cache.health()
        fresh = self._monotonic() - self.last_answer < READY_FRESH_SECONDS
        # JWTs are verified with the keys held, whatever introspection does
        ready = fresh or (self.jwks is not None and self.jwks.keys is not None)
        body = {"status": "ready" if ready else "unavailable",
                "auth_server": "ok" if fresh else (self.last_problem or core.AUTH_SERVER_UNAVAILABLE),
                "breaker": self.breaker.state,
                **({"jwks": "ok" if self.jwks.keys is not None else "none"} if self.jwks is not None else {}),
                "cache": {"backend": self.cache.backend_name, "state": "ok" if cache_ok else "degraded",
                          "errors": cache_errors}}
        return Answer(200 if ready else 503, body)

    def purge(self, token: str | None) -> Effects:
        return (yield from self.cache.purge(token))

    # -- introspection ---------------------------------------------------------------------------------

    def _validate(self, token: str) -> Generator[Any, Any, Introspected]:
        """What the authorization server says of a token: by its JWKS for a JWT (JWT_VALIDATION), else by
        introspection. A JWT that fails verification is rejected, never passed on to introspection."""
        if self.settings.oidc_discovery and self._monotonic() >= self.next_discovery:
            yield from self._rediscover()
        if self.jwks is not None and jwt.looks_like_jws(token):
            return (yield from self._verify_jwt(token))
        return (yield from self._introspect(token))

    def _verify_jwt(self, token: str) -> Generator[Any, Any, Introspected]:
        """One signature verification with the keys held; an unknown ``kid`` fetches the JWKS again, at most
        once per JWKS_MIN_REFETCH_SECONDS and once for every waiting request (a rotated-in key)."""
        yield from self._refresh_jwks()
        if self.jwks.keys is None:
            raise Undecided(core.AUTH_SERVER_UNAVAILABLE, "no JWKS fetched yet")
        try:
            record = jwt.verify(token, self.jwks.keys, self.jwt_policy, self._clock())
        except jwt.UnknownKey:
            record = None
            if self.jwks.may_refetch(self._monotonic()):
                yield Join(JWKS, self._fetch_jwks)
                try:
                    record = jwt.verify(token, self.jwks.keys, self.jwt_policy, self._clock())
                except jwt.UnknownKey:
                    pass
            if record is None:
                obs.child(obs.JWT_VERIFICATIONS, "unknown_key").inc()
                # not cached: the key may be published by the next refetch (a spray of made-up kids may
                # have taken this one), and the token should pass then
                return Introspected(False, {}, core.INVALID_TOKEN, cacheable=False)
        obs.child(obs.JWT_VERIFICATIONS, "valid" if record.active else "rejected").inc()
        return record

    def _refresh_jwks(self) -> Effects:
        """The scheduled fetch of the JWKS, when due. Before any key is held every request waits for it (one
        fetch for all); once keys are held, the one request that claims the refresh fetches, the others go on
        with the keys held, so an issuer that is slow or hung never holds up every new JWT."""
        now = self._monotonic()
        if self.jwks.keys is None:
            if self.jwks.due(now):
                yield Join(JWKS, self._fetch_jwks)
        elif self.jwks.claim_refresh(now):
            yield Join(JWKS, self._fetch_jwks)

    def _fetch_jwks(self) -> Generator[Any, Any, bool]:
        """The JWKS again; a failure keeps the keys held (and is retried after JWKS_MIN_REFETCH_SECONDS)."""
        url = self.settings.jwks_url
        try:
            answer = yield from self._call(self.jwks.request(url))
            ok = self.jwks.fetched(answer.status, answer.body, answer.headers.get("cache-control"), self._monotonic())
            why = f"status {answer.status}" if answer.status != 200 else "no usable key"
        except Undecided as error:
            ok, why = self.jwks.fetched(0, b"", None, self._monotonic()), error.code
        obs.child(obs.JWKS_FETCHES, "ok" if ok else "failed").inc()
        if not ok:
            log.warning("fetching the JWKS at %s failed (%s); %s", core.display_url(url), why,
                        "keeping the keys held" if self.jwks.keys is not None else "JWTs cannot be verified yet")
        return ok

    def _introspect(self, token: str) -> Generator[Any, Any, Introspected]:
        s = self.settings
        bearer = yield from self._service_token()
        answer = yield from self._call(core.introspection_request(
            s.introspection_url, s.oauth_client_id, s.oauth_client_secret, s.client_auth_method, token, bearer))
        if answer.status == 401 and s.client_auth_method == "bearer":  # the service token went stale: once more
            self.service_token = None
            bearer = yield from self._service_token()
            answer = yield from self._call(core.introspection_request(
                s.introspection_url, s.oauth_client_id, s.oauth_client_secret, s.client_auth_method, token, bearer))
        record = self._introspection_result(answer)
        if record.active and s.userinfo_url:
            try:
                userinfo = yield from self._call(core.userinfo_request(s.userinfo_url, token))
                status, body = userinfo.status, userinfo.body
            except Undecided:
                status, body = None, b""
            record = core.merge_userinfo(record, status, body, s.userinfo_required)
        return record

    def _introspection_result(self, answer: Response) -> Introspected:
        try:
            record = core.introspection_result(answer.status, answer.body, answer.retry_after)
        except Undecided as error:
            self.last_problem = error.code
            obs.child(obs.INTROSPECTION_ERRORS, error.code).inc()
            raise
        self.last_answer = self._monotonic()
        self.last_problem = None
        return record

    def _service_token(self) -> Generator[Any, Any, str | None]:
        if self.settings.client_auth_method != "bearer":
            return None
        if self.service_token is not None and self._monotonic() < self.service_token[1]:
            return self.service_token[0]
        return (yield Join(SERVICE_TOKEN, self._fetch_service_token))

    def _fetch_service_token(self) -> Generator[Any, Any, str]:
        s = self.settings
        if not s.token_url:
            raise Undecided(core.AUTH_SERVER_ERROR, "no token endpoint for CLIENT_AUTH_METHOD=bearer")
        answer = yield from self._call(core.token_request(s.token_url, s.oauth_client_id, s.oauth_client_secret,
                                                          s.token_scope, s.token_audience))
        self.service_token = core.token_result(answer.status, answer.body, self._monotonic())
        return self.service_token[0]

    def _rediscover(self) -> Effects:
        """Endpoints from the metadata again: those the operator set win, discovered ones are replaced. A failure
        keeps the endpoints known."""
        self.next_discovery = self._monotonic() + self.settings.discovery_refresh_seconds
        try:
            self.settings = yield from discovery(self.operator, self._call)
        except (SettingsError, Undecided) as error:
            log.warning("discovery refresh failed, keeping the known endpoints: %s",
                        getattr(error, "reason", None) or error.code)

    # -- one call to the authorization server ----------------------------------------------------------

    def _call(self, request: HttpRequest) -> Generator[Any, Any, Response]:
        """One request, retried within AUTH_SERVER_TIMEOUT when that is safe and the budget allows; a
        ``Response`` (any status), or ``Undecided``."""
        deadline = self._monotonic() + self.settings.auth_server_timeout
        if not self.breaker.admit(deadline):
            raise Undecided(core.AUTH_SERVER_UNAVAILABLE, "circuit breaker open",
                            retry_after=max(1, math.ceil(self.settings.auth_server_breaker_seconds)))
        self.budget.call()
        for attempt in range(self.settings.auth_server_retries + 1):
            outcome = yield Http(request, deadline - self._monotonic())
            if isinstance(outcome, Busy):
                self.breaker.abandon()  # never reached the server: tells nothing about it
                raise Undecided(core.AUTH_SERVER_UNAVAILABLE, "AUTH_SERVER_MAX_INFLIGHT calls already under way")
            failed = isinstance(outcome, Undecided) or outcome.status >= 500
            self.breaker.record(failed)
            retryable = outcome.retryable if isinstance(outcome, Undecided) else outcome.status in core.RETRY_STATUSES
            delay = core.retry_delay(attempt + 1, self._random())
            if (not retryable or attempt == self.settings.auth_server_retries or self.breaker.state != CLOSED
                    or self._monotonic() + delay >= deadline or not self.budget.allow_retry()):
                break
            yield Sleep(delay)
        if isinstance(outcome, Undecided):
            obs.child(obs.INTROSPECTION_ERRORS, outcome.code).inc()
            raise outcome
        return outcome

    def _probe_due(self) -> bool:
        now = self._monotonic()
        if now - self.last_answer < READY_FRESH_SECONDS or now - self.last_probe < PROBE_INTERVAL_SECONDS:
            return False
        self.last_probe = now
        return True

    # -- the answer ------------------------------------------------------------------------------------

    def _answer(self, request: PluginRequest, rid: str, record: Introspected | None, source: str | None,
                started: float, upstream: float | None = None) -> Answer:
        if record is None:
            verdict = core.Verdict(False, request.problem)
        else:
            verdict = core.decide(record, self._clock(), self.settings.clock_skew_seconds, self.policy,
                                  request.method, request.path)
        outcome = "authenticated" if verdict.authenticated else "rejected"
        self._report(request, rid, outcome, verdict.reason, verdict.user_id, source, started, upstream)
        if source == STALE:
            obs.STALE_SERVED.inc()
        return core.render_verdict(request.dialect, verdict, {"cache": source} if source else {},
                                   {"X-Request-ID": rid})

    def _report(self, request: PluginRequest, rid: str, outcome: str, reason: str | None, user_id: str | None,
                source: str | None, started: float, upstream: float | None, detail: str | None = None) -> None:
        """One log line and the metrics of one decision."""
        obs.child(obs.AUTH_REQUESTS, request.dialect, outcome).inc()
        if outcome == "rejected":
            obs.child(obs.REJECTIONS, reason).inc()
        if source:
            obs.child(obs.CACHE_REQUESTS, source).inc()
        if not log.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        # handled directly: ``log.info`` would also walk the caller's frames and build a generic record
        log.handle(DecisionRecord(outcome, {
            "request_id": rid, "dialect": request.dialect, "outcome": outcome,
            "reason": reason, "user_id": user_id or None, "cache": source, "detail": detail,
            "latency_ms": round((now - started) * 1000, 2),
            "upstream_ms": None if upstream is None else round((now - upstream) * 1000, 2)}))



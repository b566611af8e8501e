"""The two drivers: cache → authorization server → cache, around the sans-IO core.

``Authenticator`` (WSGI, threads) and ``AsyncAuthenticator`` (ASGI, one event loop) mirror each other
line for line; where they differ it is by ``await``, by the single-flight primitive (a
``concurrent.futures.Future`` or an ``asyncio`` task shared by every waiter) and, on the async side, by
running blocking cache I/O (memcached) in a thread. What needs no I/O lives in ``_Driver``.

One token costs one introspection: concurrent misses in a process share one in-flight call (every
waiter gets its result, "cannot decide" included), and instances that share memcached take dogpile's
distributed lock, so a peer waits for the cache instead of asking again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import os
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from falcon_oauth import core
from falcon_oauth import metrics as obs
from falcon_oauth.cache import VerdictCache
from falcon_oauth.core import Answer, HttpRequest, Introspected, PluginRequest, Undecided
from falcon_oauth.logs import DecisionRecord, request_id
from falcon_oauth.settings import Settings, ssl_context

# Failures where the request never reached the server (or the server dropped a kept-alive connection):
# retrying them is safe, and introspection is read-only anyway.
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

log = logging.getLogger("falcon_oauth")

HIT, MISS = "hit", "miss"
MAX_ANSWER_BYTES = 1024 * 1024
PROBE_TOKEN = "falcon-oauth-readiness-probe"
READY_FRESH_SECONDS = 30.0  # an answer this recent makes the service ready without a probe
PROBE_INTERVAL_SECONDS = 5.0  # at most one readiness probe this often

T = TypeVar("T")


class _Body:
    """Collects an answer's body within the size cap and the overall deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_ANSWER_BYTES:
            raise Undecided(core.AUTH_SERVER_BAD_RESPONSE, "answer over the size cap")
        if time.monotonic() > self.deadline:
            raise Undecided(core.AUTH_SERVER_UNAVAILABLE, "answer slower than AUTH_SERVER_TIMEOUT")
        self.chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)

    def remaining(self) -> float:
        """What is left of the deadline, for the connect and read timeouts of one attempt."""
        return max(self.deadline - time.monotonic(), 0.001)


def client_limits() -> httpx.Limits:
    return httpx.Limits(max_connections=200, max_keepalive_connections=64, keepalive_expiry=30)


def sync_client(settings: Settings, transport: httpx.BaseTransport | None, tls: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(timeout=settings.auth_server_timeout, limits=client_limits(), transport=transport,
                        verify=tls, follow_redirects=False)


def async_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    if transport is None:
        # httpx's own async pool costs milliseconds of CPU per request under concurrency; aiohttp's does not
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=client_limits(), verify=ssl_context(settings))
    return httpx.AsyncClient(timeout=settings.auth_server_timeout, limits=client_limits(),
                             transport=transport, verify=ssl_context(settings), follow_redirects=False)


class _Driver:
    """Everything both drivers do that needs no I/O."""

    def __init__(self, settings: Settings, cache: VerdictCache) -> None:
        self.configured = settings  # what the operator set; discovery fills the rest into self.settings
        self.settings = settings
        self.cache = cache
        self.policy = settings.policy
        self.next_discovery = time.monotonic() + settings.discovery_refresh_seconds
        self.service_token: tuple[str, float] | None = None  # CLIENT_AUTH_METHOD=bearer: (token, use until)
        self.last_answer = -math.inf  # monotonic time of the last trustworthy introspection answer
        self.last_probe = -math.inf
        self.last_problem: str | None = None

    def _parse(self, raw: bytes) -> PluginRequest:
        return core.parse_plugin_request(core.parse_body(raw), self.settings.token_max_length, self.policy)

    def _introspection_request(self, token: str, bearer: str | None) -> HttpRequest:
        s = self.settings
        return core.introspection_request(s.introspection_url, s.oauth_client_id, s.oauth_client_secret,
                                          s.client_auth_method, token, bearer)

    def _discovery_due(self) -> bool:
        if not self.configured.oidc_discovery or time.monotonic() < self.next_discovery:
            return False
        self.next_discovery = time.monotonic() + self.configured.discovery_refresh_seconds
        return True

    def _rediscover(self) -> None:
        """Blocking (run in a thread by the async driver); a failure keeps the endpoints already known."""
        from falcon_oauth.discovery import discover
        from falcon_oauth.settings import SettingsError

        try:
            self.settings = discover(self.configured)
        except SettingsError as error:
            log.warning("discovery refresh failed, keeping the known endpoints: %s", error.reason)

    def _fresh_service_token(self) -> str | None:
        """The plugin's own bearer token when it is still good, else None."""
        if self.service_token is not None and time.monotonic() < self.service_token[1]:
            return self.service_token[0]
        return None

    def _token_request(self) -> HttpRequest:
        s = self.settings
        if not s.token_url:
            raise Undecided(core.AUTH_SERVER_ERROR, "no token endpoint for CLIENT_AUTH_METHOD=bearer")
        return core.token_request(s.token_url, s.oauth_client_id, s.oauth_client_secret, s.token_scope,
                                  s.token_audience)

    def _keep_service_token(self, status: int, body: bytes) -> str:
        self.service_token = core.token_result(status, body, time.monotonic())
        return self.service_token[0]

    def _drop_service_token(self) -> bool:
        """After a 401 from introspection: forget the plugin's token, so one new one is tried."""
        if self.settings.client_auth_method != "bearer":
            return False
        self.service_token = None
        return True

    def _introspection_result(self, status: int, body: bytes, retry_after: str | None) -> Introspected:
        try:
            record = core.introspection_result(status, body, retry_after)
        except Undecided as error:
            self.last_problem = error.code
            obs.child(obs.INTROSPECTION_ERRORS, error.code).inc()
            raise
        self.last_answer = time.monotonic()
        self.last_problem = None
        return record

    def _merge_userinfo(self, record: Introspected, status: int | None, body: bytes) -> Introspected:
        return core.merge_userinfo(record, status, body, self.settings.userinfo_required)

    def _answer(self, request: PluginRequest, rid: str, record: Introspected | None, cache: str | None,
                started: float, upstream: float | None = None) -> Answer:
        if record is None:
            verdict = core.Verdict(False, request.problem)
        else:
            verdict = core.decide(record, time.time(), self.settings.clock_skew_seconds, self.policy,
                                  request.method, request.path)
        outcome = "authenticated" if verdict.authenticated else "rejected"
        self._report(request, rid, outcome, verdict.reason, verdict.user_id, cache, started, upstream)
        return core.render_verdict(request.dialect, verdict, {"cache": cache} if cache else {},
                                   {"X-Request-ID": rid})

    def _undecided(self, request: PluginRequest, rid: str, error: Undecided, started: float,
                   upstream: float) -> Answer:
        self._report(request, rid, "undecided", error.code, None, MISS, started, upstream, error.detail)
        return core.render_undecided(request.dialect, error, {"X-Request-ID": rid})

    def _report(self, request: PluginRequest, rid: str, outcome: str, reason: str | None, user_id: str | None,
                cache: str | None, started: float, upstream: float | None, detail: str | None = None) -> None:
        """One log line and the metrics of one decision."""
        obs.child(obs.AUTH_REQUESTS, request.dialect, outcome).inc()
        if outcome == "rejected":
            obs.child(obs.REJECTIONS, reason).inc()
        if cache:
            obs.child(obs.CACHE_REQUESTS, cache).inc()
        if not log.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        # handled directly: ``log.info`` would also walk the caller's frames and build a generic record
        log.handle(DecisionRecord(outcome, {
            "request_id": rid, "dialect": request.dialect, "outcome": outcome,
            "reason": reason, "user_id": user_id or None, "cache": cache, "detail": detail,
            "latency_ms": round((now - started) * 1000, 2),
            "upstream_ms": None if upstream is None else round((now - upstream) * 1000, 2)}))

    def _retry(self, outcome: tuple[int, bytes, str | None] | Undecided, attempt: int,
               deadline: float) -> float | None:
        """The pause before another attempt, or None when this outcome is final: not retryable, out of
        attempts (AUTH_SERVER_RETRIES), or no time left before the overall deadline."""
        retryable = outcome.retryable if isinstance(outcome, Undecided) else outcome[0] in core.RETRY_STATUSES
        if not retryable or attempt >= self.settings.auth_server_retries:
            return None
        delay = core.retry_delay(attempt + 1, random.random())
        return delay if time.monotonic() + delay < deadline else None

    @staticmethod
    def _final(outcome: tuple[int, bytes, str | None] | Undecided) -> tuple[int, bytes, str | None]:
        if isinstance(outcome, Undecided):
            raise outcome
        return outcome

    @staticmethod
    def _transport_error(exc: Exception) -> Undecided:
        return Undecided(core.AUTH_SERVER_UNAVAILABLE, type(exc).__name__,
                         retryable=isinstance(exc, RETRYABLE_ERRORS))

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Measures one call to the authorization server."""
        obs.INFLIGHT.inc()
        started = time.perf_counter()
        try:
            yield
        except Undecided as error:
            obs.child(obs.INTROSPECTION_ERRORS, error.code).inc()
            raise
        finally:
            obs.INTROSPECTION_DURATION.observe(time.perf_counter() - started)
            obs.INFLIGHT.dec()

    def _probe_due(self) -> bool:
        now = time.monotonic()
        if now - self.last_answer < READY_FRESH_SECONDS or now - self.last_probe < PROBE_INTERVAL_SECONDS:
            return False
        self.last_probe = now
        return True

    def _readiness(self, cache_ok: bool) -> Answer:
        """Ready when the authorization server answered lately. A cache outage degrades but stays ready:
        requests still succeed, from the authorization server."""
        fresh = time.monotonic() - self.last_answer < READY_FRESH_SECONDS
        body = {"status": "ready" if fresh else "unavailable",
                "auth_server": "ok" if fresh else (self.last_problem or core.AUTH_SERVER_UNAVAILABLE),
                "cache": {"backend": self.cache.backend_name, "state": "ok" if cache_ok else "degraded",
                          "errors": self.cache.errors}}
        return Answer(200 if fresh else 503, body)

    def _peer_polls(self) -> Iterator[float]:
        """Delays between looks at the cache while a peer instance holds the lock."""
        deadline = time.monotonic() + self.cache.lock_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            yield delay
            delay = min(delay * 2, 0.1)


class SingleFlight:
    """One call per key at a time in this process; every concurrent caller gets its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, concurrent.futures.Future[Any]] = {}

    def run(self, key: str, fn: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = concurrent.futures.Future()
        if leader:
            try:
                call.set_result(fn())
            except BaseException as exc:
                call.set_exception(exc)
            finally:
                with self._lock:
                    del self._calls[key]
        return call.result()


class AsyncSingleFlight:
    """One call per key at a time on this event loop; every concurrent caller gets its outcome. The call
    runs as its own task, so a caller that goes away does not cancel it for the others."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[Any]] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = asyncio.ensure_future(fn())
            call.add_done_callback(lambda task: self._done(key, task))
        return await asyncio.shield(call)

    def _done(self, key: str, task: asyncio.Task[Any]) -> None:
        del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an outcome nobody awaited any more is not reported


class PerProcess:
    """A value made once per process, on first use: WSGI has no lifespan, and gunicorn may import the
    app before it forks its workers."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: Any = None

    def get(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value, self._pid = self._factory(), os.getpid()
        return self._value


class ClientPool:
    """Sync HTTP clients lent one call at a time: a call takes an idle client (or makes one) and gives it back.
    So there are as many clients as calls ever ran at once, threads or greenlets alike, and each client's
    own connection pool holds the one connection its call uses. ``list.pop`` and ``append`` are atomic.
    At most MAX_IDLE stay idle (as many kept-alive connections as one shared pool kept): a client given back
    beyond that, after a burst, is closed."""

    MAX_IDLE = 64

    def __init__(self, factory: Callable[[], httpx.Client]) -> None:
        self._factory = factory
        self._idle: list[httpx.Client] = []
        self._pid = os.getpid()

    @contextmanager
    def lend(self) -> Iterator[httpx.Client]:
        if self._pid != os.getpid():  # a forked child never uses its parent's connections
            self._idle, self._pid = [], os.getpid()
        try:
            client = self._idle.pop()
        except IndexError:
            client = self._factory()
        try:
            yield client
        finally:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(client)
            else:
                client.close()


class Authenticator(_Driver):
    """The WSGI driver. Each call to the authorization server borrows a client of its own: httpx's pool
    rescans every connection and request it holds, under one lock, for each request, so one client shared
    by 16 threads spent more CPU on its pool than on the calls. The clients of a process share one TLS
    context, loaded once."""

    def __init__(self, settings: Settings, cache: VerdictCache,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings, cache)
        tls = PerProcess(lambda: ssl_context(settings))
        self._clients = ClientPool(lambda: sync_client(settings, transport, tls.get()))
        self._flights = SingleFlight()

    def authenticate(self, raw: bytes, header_request_id: str | None = None) -> Answer:
        started = time.perf_counter()
        request = self._parse(raw)
        rid = request_id(request.request_id, header_request_id)
        if request.token is None:
            return self._answer(request, rid, None, None, started)
        upstream = time.perf_counter()
        try:
            record, cache = self._lookup(request.token)
        except Undecided as error:
            return self._undecided(request, rid, error, started, upstream)
        return self._answer(request, rid, record, cache, started, upstream if cache == MISS else None)

    def readiness(self) -> Answer:
        if self._probe_due():
            try:
                self._introspect(PROBE_TOKEN)
            except Undecided:
                pass
        return self._readiness(self.cache.ping())

    def purge(self, token: str | None) -> bool:
        return self.cache.clear() if token is None else self.cache.delete(token)

    def _lookup(self, token: str) -> tuple[Introspected, str]:
        record = self.cache.get(token)
        if record is not None:
            return record, HIT
        return self._flights.run(self.cache.key(token), lambda: self._fill(token))

    def _fill(self, token: str) -> tuple[Introspected, str]:
        mutex = self.cache.mutex(token)
        if mutex is not None and not self.cache.try_lock(mutex):
            record = self._wait_for_peer(token, mutex)
            if record is not None:
                return record, HIT
            mutex = None
        try:
            record = self._introspect(token)
            self.cache.set(token, record)
            return record, MISS
        finally:
            if mutex is not None:
                self.cache.unlock(mutex)

    def _wait_for_peer(self, token: str, mutex: Any) -> Introspected | None:
        for delay in self._peer_polls():
            time.sleep(delay)
            record = self.cache.get(token)
            if record is not None or not self.cache.locked(mutex):
                return record
        return None

    def _introspect(self, token: str) -> Introspected:
        if self._discovery_due():
            self._rediscover()
        bearer = self._service_token()
        status, body, retry_after = self._send(self._introspection_request(token, bearer))
        if status == 401 and self._drop_service_token():
            bearer = self._service_token()
            status, body, retry_after = self._send(self._introspection_request(token, bearer))
        record = self._introspection_result(status, body, retry_after)
        if record.active and self.settings.userinfo_url:
            try:
                status, body, _ = self._send(core.userinfo_request(self.settings.userinfo_url, token))
            except Undecided:
                status, body = None, b""
            record = self._merge_userinfo(record, status, body)
        return record

    def _service_token(self) -> str | None:
        if self.settings.client_auth_method != "bearer":
            return None
        return self._fresh_service_token() or self._flights.run("\0service-token", self._fetch_service_token)

    def _fetch_service_token(self) -> str:
        status, body, _ = self._send(self._token_request())
        return self._keep_service_token(status, body)

    def _send(self, request: HttpRequest) -> tuple[int, bytes, str | None]:
        deadline = time.monotonic() + self.settings.auth_server_timeout
        for attempt in itertools.count():
            try:
                outcome: tuple[int, bytes, str | None] | Undecided = self._attempt(request, deadline)
            except Undecided as error:
                outcome = error
            delay = self._retry(outcome, attempt, deadline)
            if delay is None:
                return self._final(outcome)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, request: HttpRequest, deadline: float) -> tuple[int, bytes, str | None]:
        body = _Body(deadline)
        with self._call():
            try:
                with self._clients.lend() as client, client.stream(
                        request.method, request.url, headers=request.headers, data=request.form,
                        timeout=body.remaining()) as response:
                    for chunk in response.iter_bytes():
                        body.add(chunk)
                    return response.status_code, body.value(), response.headers.get("retry-after")
            except Undecided:
                raise
            except Exception as exc:  # refused, reset, timed out, TLS: whatever the transport raises
                raise self._transport_error(exc) from None


class AsyncAuthenticator(_Driver):
    """The ASGI driver: the mirror of ``Authenticator``."""

    def __init__(self, settings: Settings, cache: VerdictCache,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(settings, cache)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._flights = AsyncSingleFlight()

    async def start(self) -> None:
        self._http = async_client(self.settings, self._transport)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # served before the lifespan started (a server without lifespan support)
            self._http = async_client(self.settings, self._transport)
        return self._http

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """A cache call: in a thread when it is network I/O, inline when it is memory."""
        if self.cache.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def authenticate(self, raw: bytes, header_request_id: str | None = None) -> Answer:
        started = time.perf_counter()
        request = self._parse(raw)
        rid = request_id(request.request_id, header_request_id)
        if request.token is None:
            return self._answer(request, rid, None, None, started)
        upstream = time.perf_counter()
        try:
            record, cache = await self._lookup(request.token)
        except Undecided as error:
            return self._undecided(request, rid, error, started, upstream)
        return self._answer(request, rid, record, cache, started, upstream if cache == MISS else None)

    async def readiness(self) -> Answer:
        if self._probe_due():
            try:
                await self._introspect(PROBE_TOKEN)
            except Undecided:
                pass
        return self._readiness(await self._io(self.cache.ping))

    async def purge(self, token: str | None) -> bool:
        return await self._io(self.cache.clear) if token is None else await self._io(self.cache.delete, token)

    async def _lookup(self, token: str) -> tuple[Introspected, str]:
        record = await self._io(self.cache.get, token)
        if record is not None:
            return record, HIT
        return await self._flights.run(self.cache.key(token), lambda: self._fill(token))

    async def _fill(self, token: str) -> tuple[Introspected, str]:
        mutex = self.cache.mutex(token)
        if mutex is not None and not await self._io(self.cache.try_lock, mutex):
            record = await self._wait_for_peer(token, mutex)
            if record is not None:
                return record, HIT
            mutex = None
        try:
            record = await self._introspect(token)
            await self._io(self.cache.set, token, record)
            return record, MISS
        finally:
            if mutex is not None:
                await self._io(self.cache.unlock, mutex)

    async def _wait_for_peer(self, token: str, mutex: Any) -> Introspected | None:
        for delay in self._peer_polls():
            await asyncio.sleep(delay)
            record = await self._io(self.cache.get, token)
            if record is not None or not await self._io(self.cache.locked, mutex):
                return record
        return None

    async def _introspect(self, token: str) -> Introspected:
        if self._discovery_due():
            await asyncio.to_thread(self._rediscover)
        bearer = await self._service_token()
        status, body, retry_after = await self._send(self._introspection_request(token, bearer))
        if status == 401 and self._drop_service_token():
            bearer = await self._service_token()
            status, body, retry_after = await self._send(self._introspection_request(token, bearer))
        record = self._introspection_result(status, body, retry_after)
        if record.active and self.settings.userinfo_url:
            try:
                status, body, _ = await self._send(core.userinfo_request(self.settings.userinfo_url, token))
            except Undecided:
                status, body = None, b""
            record = self._merge_userinfo(record, status, body)
        return record

    async def _service_token(self) -> str | None:
        if self.settings.client_auth_method != "bearer":
            return None
        return self._fresh_service_token() or await self._flights.run("\0service-token", self._fetch_service_token)

    async def _fetch_service_token(self) -> str:
        status, body, _ = await self._send(self._token_request())
        return self._keep_service_token(status, body)

    async def _send(self, request: HttpRequest) -> tuple[int, bytes, str | None]:
        deadline = time.monotonic() + self.settings.auth_server_timeout
        for attempt in itertools.count():
            try:
                outcome: tuple[int, bytes, str | None] | Undecided = await self._attempt(request, deadline)
            except Undecided as error:
                outcome = error
            delay = self._retry(outcome, attempt, deadline)
            if delay is None:
                return self._final(outcome)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, request: HttpRequest, deadline: float) -> tuple[int, bytes, str | None]:
        body = _Body(deadline)
        with self._call():
            try:
                async with self._client().stream(request.method, request.url, headers=request.headers,
                                                 data=request.form, timeout=body.remaining()) as response:
                    async for chunk in response.aiter_bytes():
                        body.add(chunk)
                    return response.status_code, body.value(), response.headers.get("retry-after")
            except Undecided:
                raise
            except Exception as exc:  # refused, reset, timed out, TLS: whatever the transport raises
                raise self._transport_error(exc) from None

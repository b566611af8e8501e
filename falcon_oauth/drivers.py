"""The two drivers of the sans-IO flows (``falcon_oauth.flow``, ``falcon_oauth.cache``): each takes a generator
of effects, performs every effect it yields, and sends the result back, until the generator returns.

``SyncDriver`` (WSGI, threads) and ``AsyncDriver`` (ASGI, one event loop) differ only in how they perform an
effect: by ``await``, by the single-flight primitive (a ``concurrent.futures.Future`` or an ``asyncio`` task
shared by every waiter), by the semaphore holding the AUTH_SERVER_MAX_INFLIGHT call slots, and, on the async
side, by running the shared store's blocking calls (memcached, Redis) in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from falcon_oauth import core
from falcon_oauth import metrics as obs
from falcon_oauth.core import HttpRequest, Undecided
from falcon_oauth.effects import Busy, Http, Join, Response, Shared, Sleep
from falcon_oauth.settings import Settings, ssl_context

# Failures where the request never reached the server (or the server dropped a kept-alive connection):
# retrying them is safe, and introspection is read-only anyway.
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
MAX_ANSWER_BYTES = 1024 * 1024
ANSWER_HEADERS = ("retry-after", "cache-control")  # what the flows read of an answer's headers

T = TypeVar("T")


class _Body:
    """Collects an answer's body within the size cap and the deadline of its call."""

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


def _transport_error(exc: Exception) -> Undecided:
    return Undecided(core.AUTH_SERVER_UNAVAILABLE, type(exc).__name__, retryable=isinstance(exc, RETRYABLE_ERRORS))


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in ANSWER_HEADERS if name in response.headers}


@contextmanager
def _measured() -> Iterator[None]:
    """Measures one call to the authorization server."""
    obs.INFLIGHT.inc()
    started = time.perf_counter()
    try:
        yield
    finally:
        obs.INTROSPECTION_DURATION.observe(time.perf_counter() - started)
        obs.INFLIGHT.dec()


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
    httpx's pool rescans every connection and request it holds, under one lock, for each request, so one
    client shared by 16 threads spent more CPU on its pool than on the calls. So there are as many clients as
    calls ever ran at once, threads or greenlets alike, and each client's own pool holds the one connection its
    call uses. ``list.pop`` and ``append`` are atomic. At most MAX_IDLE stay idle: a client given back beyond
    that, after a burst, is closed."""

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


class SyncDriver:
    def __init__(self, settings: Settings, store: Any = None, transport: httpx.BaseTransport | None = None) -> None:
        self.store = store
        tls = PerProcess(lambda: ssl_context(settings))  # the clients of a process share one TLS context
        self._clients = ClientPool(lambda: sync_client(settings, transport, tls.get()))
        self._flights = SingleFlight()
        self._slots = threading.BoundedSemaphore(settings.auth_server_max_inflight)

    def run(self, flow: Generator[Any, Any, T]) -> T:
        result: Any = None
        error: Undecided | None = None
        while True:
            try:
                effect = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                result = self._perform(effect)
            except Undecided as exc:  # a joined flow's outcome
                error = exc

    def _perform(self, effect: Any) -> Any:
        kind = type(effect)
        if kind is Shared:
            return getattr(self.store, effect.method)(*effect.args)
        if kind is Join:
            return self._flights.run(effect.key, lambda: self.run(effect.start()))
        if kind is Http:
            return self._http(effect.request, time.monotonic() + effect.timeout)
        if kind is Sleep:
            return time.sleep(effect.seconds)
        raise TypeError(f"not an effect: {effect!r}")

    def _http(self, request: HttpRequest, deadline: float) -> Response | Busy | Undecided:
        if not self._slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
            return Busy()
        body = _Body(deadline)
        try:
            with _measured(), self._clients.lend() as client, client.stream(
                    request.method, request.url, headers=request.headers, data=request.form,
                    timeout=body.remaining()) as response:
                for chunk in response.iter_bytes():
                    body.add(chunk)
                return Response(response.status_code, body.value(), _headers(response))
        except Undecided as error:
            return error
        except Exception as exc:  # refused, reset, timed out, TLS: whatever the transport raises
            return _transport_error(exc)
        finally:
            self._slots.release()


class AsyncDriver:
    def __init__(self, settings: Settings, store: Any = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.store = store
        self._settings = settings
        self._transport = transport
        self._http_client: httpx.AsyncClient | None = None
        self._flights = AsyncSingleFlight()
        self._slots = asyncio.Semaphore(settings.auth_server_max_inflight)

    async def start(self) -> None:
        self._http_client = async_client(self._settings, self._transport)

    async def close(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None

    def _client(self) -> httpx.AsyncClient:
        if self._http_client is None:  # served before the lifespan started (a server without lifespan support)
            self._http_client = async_client(self._settings, self._transport)
        return self._http_client

    async def run(self, flow: Generator[Any, Any, T]) -> T:
        result: Any = None
        error: Undecided | None = None
        while True:
            try:
                effect = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                result = await self._perform(effect)
            except Undecided as exc:  # a joined flow's outcome
                error = exc

    async def _perform(self, effect: Any) -> Any:
        kind = type(effect)
        if kind is Shared:  # blocking network I/O: never on the event loop
            return await asyncio.to_thread(getattr(self.store, effect.method), *effect.args)
        if kind is Join:
            return await self._flights.run(effect.key, lambda: self.run(effect.start()))
        if kind is Http:
            return await self._http(effect.request, time.monotonic() + effect.timeout)
        if kind is Sleep:
            return await asyncio.sleep(effect.seconds)
        raise TypeError(f"not an effect: {effect!r}")

    async def _http(self, request: HttpRequest, deadline: float) -> Response | Busy | Undecided:
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            return Busy()
        body = _Body(deadline)
        try:
            with _measured():
                async with self._client().stream(request.method, request.url, headers=request.headers,
                                                 data=request.form, timeout=body.remaining()) as response:
                    async for chunk in response.aiter_bytes():
                        body.add(chunk)
                    return Response(response.status_code, body.value(), _headers(response))
        except Undecided as error:
            return error
        except Exception as exc:  # refused, reset, timed out, TLS: whatever the transport raises
            return _transport_error(exc)
        finally:
            self._slots.release()

"""The effects the sans-IO flows (``falcon_oauth.flow``, ``falcon_oauth.cache``, ``falcon_oauth.discovery``)
yield, and what a driver (``falcon_oauth.drivers``) sends back for each. Plain data: no I/O here."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from falcon_oauth.core import HttpRequest


class Http(NamedTuple):
    """Send ``request`` once, within ``timeout`` seconds (waiting for a slot included), holding one of the
    AUTH_SERVER_MAX_INFLIGHT slots. The driver sends back a ``Response``, ``Busy`` (no slot came free in
    time), or the ``core.Undecided`` the transport came to (sent, not raised). A duration, not a deadline:
    the flow's clock (injected in tests) and the driver's need not agree."""
    request: HttpRequest
    timeout: float


class Response(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]  # the few a flow reads, lower-case: retry-after, cache-control

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")


class Busy(NamedTuple):
    """No call slot came free within the timeout."""


class Shared(NamedTuple):
    """Call ``method(*args)`` on the shared store (``falcon_oauth.store.Store``); the result is sent back."""
    method: str
    args: tuple[Any, ...] = ()


class Join(NamedTuple):
    """Run the flow ``start()`` makes once per ``key`` in this process; every concurrent caller gets its
    outcome (its result, or the ``Undecided`` it raised, thrown in)."""
    key: str
    start: Callable[[], Generator[Any, Any, Any]]


class Sleep(NamedTuple):
    seconds: float


Effects = Generator[Any, Any, Any]

"""The shared tier (L2) of the verdict cache: a dogpile.cache region over memcached or Redis, configured from
settings as a prefixed dict, its values sealed by a ``ProxyBackend`` (``falcon_oauth.seal``).

Blocking network I/O: the async driver calls it in a thread. Every method is safe when the backend is down:
reads miss, writes are dropped, and the fault is counted and logged at most once a minute — a cache fault is
never a request fault.

- memcached: dogpile's pymemcache backend with socket timeouts and a serde that hands back bytes whatever the
  flags (pymemcache's default unpickles a value stored with flags=1: whoever could write to memcached could
  run code here). Its distributed lock is an ``add``.
- Redis: dogpile's redis backend over redis-py, with socket timeouts; redis-py returns bytes and never
  unpickles. Its distributed lock is redis-py's ``Lock``.
- A value that does not open (forged, altered, copied from another key, sealed under another secret) is a
  miss, counted in ``falcon_oauth_cache_rejected_values_total`` and logged at most once a minute.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import orjson
from dogpile.cache import make_region, register_backend
from dogpile.cache.api import NO_VALUE, CantDeserializeException
from dogpile.cache.backends.memcached import MemcachedLock, PyMemcacheBackend

from falcon_oauth.cache import KEY_FORMAT, REJECTED, cache_secret, lock_timeout
from falcon_oauth.metrics import CACHE_ERRORS, CACHE_REJECTED
from falcon_oauth.seal import Sealer, SealingProxy, derive_key
from falcon_oauth.settings import Settings

log = logging.getLogger("falcon_oauth.cache")

LOG_INTERVAL = 60.0  # at most one line a minute about cache faults, and one about rejected values


class BytesOnly:
    """The memcached client's serde: bytes in, the same bytes out, whatever flags memcached holds for a value."""

    @staticmethod
    def serialize(key: str, value: Any) -> tuple[bytes, int]:
        if not isinstance(value, bytes):
            raise TypeError("only bytes are written to memcached")
        return value, 0

    @staticmethod
    def deserialize(key: str, value: bytes, flags: int) -> bytes:
        return value


class BytesMemcachedLock(MemcachedLock):
    """dogpile's memcached lock (an ``add`` that memcached drops after the lock timeout), storing bytes: its
    own stores the int 1, which ``BytesOnly`` refuses."""

    def acquire(self, wait: bool = True) -> bool:
        while not self.client_fn().add(self.key, b"1", self.timeout):
            if not wait:
                return False
            time.sleep(0.05)
        return True


class TimedPyMemcacheBackend(PyMemcacheBackend):
    """dogpile's pymemcache backend, plus the socket timeouts it does not pass on (without them a hung
    memcached hangs the request), with bytes-only values and locks."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__({**arguments, "serde": BytesOnly()})
        self.socket_timeout = arguments["socket_timeout"]

    def get_mutex(self, key: str) -> BytesMemcachedLock | None:
        if not self.distributed_lock:
            return None
        return BytesMemcachedLock(lambda: self.client, key, timeout=self.lock_timeout)

    def _create_client(self) -> Any:
        import pymemcache

        return pymemcache.client.hash.HashClient(
            self.url, serde=self.serde, default_noreply=False,
            connect_timeout=self.socket_timeout, timeout=self.socket_timeout,
            retry_attempts=self.hashclient_retry_attempts, retry_timeout=self.hashclient_retry_timeout,
            dead_timeout=self.dead_timeout,
        )


register_backend("falcon_oauth.pymemcache", "falcon_oauth.store", "TimedPyMemcacheBackend")


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CantDeserializeException() from None


def region_config(settings: Settings) -> dict[str, Any]:
    """The region's configuration as dogpile's prefixed dict (``configure_from_config``)."""
    # the store drops entries by itself at the longest lifetime; the entry's own times are the precise ones
    expire = max(settings.cache_ttl + settings.cache_stale_if_error, settings.cache_negative_ttl) + 1
    if settings.cache_backend == "redis":
        return {
            "cache.backend": "dogpile.cache.redis",
            "cache.arguments.url": settings.redis_url,
            "cache.arguments.socket_timeout": settings.redis_timeout,
            "cache.arguments.socket_connect_timeout": settings.redis_timeout,
            "cache.arguments.redis_expiration_time": expire,
            "cache.arguments.distributed_lock": True,
            "cache.arguments.thread_local_lock": False,
            "cache.arguments.lock_timeout": lock_timeout(settings),
        }
    return {
        "cache.backend": "falcon_oauth.pymemcache",
        "cache.arguments.url": list(settings.memcached_servers),
        "cache.arguments.socket_timeout": settings.memcached_timeout,
        "cache.arguments.distributed_lock": True,
        "cache.arguments.lock_timeout": lock_timeout(settings),
        "cache.arguments.memcached_expire_time": expire,
        "cache.arguments.hashclient_retry_attempts": 1,
        "cache.arguments.hashclient_retry_timeout": 1,
        "cache.arguments.hashclient_dead_timeout": 2,
    }


class Store:
    """The calls ``cache.Shared`` effects name."""

    def __init__(self, settings: Settings) -> None:
        self.backend_name = settings.cache_backend
        self._settings = settings
        self.errors = 0
        self._last_error_log = self._last_rejected_log = -math.inf
        self._read = threading.local()  # whether this thread's read met a value that failed authentication
        secret = cache_secret(settings)
        config = region_config(settings)
        config["cache.wrap"] = [SealingProxy(Sealer(derive_key(secret, f"falcon-oauth {KEY_FORMAT} cache values")),
                                             self._rejected)]
        self.region = make_region(serializer=orjson.dumps, deserializer=_loads).configure_from_config(
            config, "cache.")

    def _report(self, exc: BaseException) -> None:
        self.errors += 1
        CACHE_ERRORS.inc()
        now = time.monotonic()
        if now - self._last_error_log >= LOG_INTERVAL:
            self._last_error_log = now
            log.warning("cache backend %s failed (%s); answering from the authorization server",
                        self.backend_name, type(exc).__name__)

    def _rejected(self) -> None:
        self._read.rejected = True
        CACHE_REJECTED.inc()
        now = time.monotonic()
        if now - self._last_rejected_log >= LOG_INTERVAL:
            self._last_rejected_log = now
            log.warning("a %s value failed authentication (forged, altered or copied from another key, "
                        "or sealed under another CACHE_KEY_SECRET) and was read as a miss; "
                        "counted in falcon_oauth_cache_rejected_values_total", self.backend_name)

    def get(self, key: str) -> Any:
        """The opened value; None when absent or on a fault; ``REJECTED`` for a value that failed authentication
        (the sealing proxy reports it in this thread)."""
        self._read.rejected = False
        try:
            value = self.region.get(key, ignore_expiration=True)
        except Exception as exc:
            self._report(exc)
            return None
        if self._read.rejected:
            return REJECTED
        return None if value is NO_VALUE else value

    def set(self, key: str, value: Any) -> bool:
        try:
            self.region.set(key, value)
            return True
        except Exception as exc:
            self._report(exc)
            return False

    def delete(self, key: str) -> bool:
        try:
            self.region.delete(key)
            return True
        except Exception as exc:
            self._report(exc)
            return False

    def delete_checked(self, key: str) -> bool:
        """A delete that is only said to be done when the store answered (a purge must never claim otherwise):
        pymemcache's HashClient answers its default, not an error, while it holds a server as failed."""
        return self.ping() and self.delete(key)

    def generation(self, key: str) -> str | None:
        """The shared generation ("" when none was set), or None when the store cannot say."""
        try:
            value = self.region.get(key, ignore_expiration=True)
        except Exception as exc:
            self._report(exc)
            return None
        if value is NO_VALUE:
            return "" if self.ping() else None
        return value.get("generation") if isinstance(value, dict) else None

    def set_generation(self, key: str, generation: str) -> bool:
        return self.ping() and self.set(key, {"generation": generation})

    def lock(self, key: str) -> tuple[bool, Any]:
        """Take the lock shared by every instance without waiting: (taken, handle). A fault counts as taken
        without a handle (go on without the lock)."""
        try:
            mutex = self.region.backend.get_mutex(key)
            return (True, mutex) if mutex.acquire(wait=False) else (False, None)
        except Exception as exc:
            self._report(exc)
            return True, None

    def locked(self, key: str) -> bool:
        try:
            return bool(self.region.backend.get_mutex(key).locked())
        except Exception as exc:
            self._report(exc)
            return False

    def unlock(self, mutex: Any) -> None:
        try:
            mutex.release()
        except Exception as exc:
            self._report(exc)

    def health(self) -> tuple[bool, int]:
        return self.ping(), self.errors

    def ping(self) -> bool:
        """Whether every server answers a round trip now."""
        try:
            if self.backend_name == "redis":
                self.region.actual_backend.writer_client.ping()
                return True
            from pymemcache.client.base import Client

            timeout = self._settings.memcached_timeout
            for server in self._settings.memcached_servers:
                host, _, port = server.rpartition(":")
                client = Client((host, int(port)), connect_timeout=timeout, timeout=timeout)
                try:
                    client.version()
                finally:
                    client.close()
            return True
        except Exception as exc:
            self._report(exc)
            return False

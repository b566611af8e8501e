"""The verdict cache: a dogpile.cache region chosen by settings (memory, memcached or null).

- Keys are a keyed BLAKE2b-256 of the token (a MAC) under a key derived from ``CACHE_KEY_SECRET``, bound to
  everything that changes what is stored for a token (``binding``), the key format and (memcached) a
  generation that ``clear()`` bumps: the region's key mangler.
- memcached values are JSON ``{"record", "expires_at", "stored_at"}``, sealed (``falcon_oauth.seal``:
  AES-256-GCM, the cache key as associated data) and hold no token. The client's serde hands back bytes
  whatever the flags (never pickle). A value that does not open is a miss, counted and logged at most once
  a minute; one that opens still lives at most ``CACHE_TTL`` (``CACHE_NEGATIVE_TTL`` if inactive) from
  when it was stored, whatever its ``expires_at`` says.
- The memory backend keeps the record object itself, in a bounded, thread-safe LRU mapping (dogpile's own
  dict never evicts); its purges reach every worker process through ``falcon_oauth.purges``.
- The memcached backend is dogpile's pymemcache backend with socket timeouts.
- A cache fault is never a request fault: it is counted, logged at most once a minute, and reads as a miss.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from dogpile.cache import make_region, register_backend
from dogpile.cache.api import NO_VALUE, CantDeserializeException
from dogpile.cache.backends.memcached import MemcachedLock, PyMemcacheBackend

from falcon_oauth.core import Introspected, cache_ttl
from falcon_oauth.metrics import CACHE_ERRORS, CACHE_REJECTED
from falcon_oauth.purges import SharedPurges
from falcon_oauth.seal import Sealer, SealingProxy, derive_key
from falcon_oauth.settings import Settings

log = logging.getLogger("falcon_oauth.cache")

KEY_FORMAT = "fo3"  # fo3: sealed values, keys bound to ``binding`` (fo2: JSON in the clear, introspection URL)
LOG_INTERVAL = 60.0  # at most one line a minute about cache faults, and one about rejected values
GENERATION_REFRESH = 1.0


class LRUDict:
    """The mapping dogpile's memory backend stores into, bounded to ``max_entries`` (least recently used
    goes first). cachetools' LRUCache is not thread-safe, and WSGI workers run threads."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            try:
                self._data.move_to_end(key)
            except KeyError:
                return default
            return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def pop(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.pop(key, default)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class BytesOnly:
    """The memcached client's serde: bytes in, the same bytes out, whatever flags memcached holds for a value.
    pymemcache's default (dogpile's choice) unpickles a value stored with flags=1, so anyone who could write
    to memcached could run code here."""

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


register_backend("falcon_oauth.pymemcache", "falcon_oauth.cache", "TimedPyMemcacheBackend")


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CantDeserializeException() from None


def region_config(settings: Settings) -> dict[str, Any]:
    """The region's configuration as dogpile's prefixed dict (``configure_from_config``)."""
    if settings.cache_backend == "memcached":
        return {
            "cache.backend": "falcon_oauth.pymemcache",
            "cache.arguments.url": list(settings.memcached_servers),
            "cache.arguments.socket_timeout": settings.memcached_timeout,
            "cache.arguments.distributed_lock": True,
            # held at most as long as one introspection (and userinfo) may take, then released by memcached
            "cache.arguments.lock_timeout": lock_timeout(settings),
            # memcached drops entries by itself at the longest lifetime; expires_at is the precise one
            "cache.arguments.memcached_expire_time": max(settings.cache_ttl, settings.cache_negative_ttl) + 1,
            "cache.arguments.hashclient_retry_attempts": 1,
            "cache.arguments.hashclient_retry_timeout": 1,
            "cache.arguments.hashclient_dead_timeout": 2,
        }
    if settings.cache_backend == "memory":
        return {"cache.backend": "dogpile.cache.memory",
                "cache.arguments.cache_dict": LRUDict(settings.cache_max_entries)}
    return {"cache.backend": "dogpile.cache.null"}


def binding(settings: Settings) -> bytes:
    """Everything that changes what is stored for a token: where and as whom the plugin asks (the service
    token's endpoint, scope and audience with CLIENT_AUTH_METHOD=bearer), and what userinfo adds. Keys are
    bound to it, so configurations that differ in any of it never share an entry."""
    return orjson.dumps([settings.introspection_url, settings.userinfo_url, settings.userinfo_required,
                         settings.oauth_client_id, settings.client_auth_method, settings.token_url,
                         settings.token_scope, settings.token_audience])


def lock_timeout(settings: Settings) -> int:
    calls = 2 if settings.userinfo_endpoint else 1
    return math.ceil(settings.auth_server_timeout * calls) + 1


class VerdictCache:
    """Introspection records by token, with their own lifetimes. Every method is safe to call when the
    backend is down: reads miss, writes are dropped."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.backend_name = settings.cache_backend
        self.blocking = settings.cache_backend == "memcached"  # network I/O: keep it off the event loop
        self.lock_timeout = lock_timeout(settings)
        self._clock = clock
        self._ttl = settings.cache_ttl
        self._negative_ttl = settings.cache_negative_ttl
        self._servers = settings.memcached_servers
        self._socket_timeout = settings.memcached_timeout
        # unset, the secret comes from the client credentials: rotating the client secret rotates it too
        secret = settings.cache_key_secret or f"{settings.oauth_client_id}\0{settings.oauth_client_secret}"
        # keyed BLAKE2b (RFC 7693), a MAC by design: a fifth of HMAC-SHA256's cost here, where OpenSSL's
        # per-call set-up dominates; the keyed state is made once and copied for each key
        self._mac = hashlib.blake2b(binding(settings), digest_size=32,
                                    key=derive_key(secret, f"falcon-oauth {KEY_FORMAT} cache keys"))
        self._generation_key = f"{KEY_FORMAT}:gen:" + self._digest("generation")
        self._generation = 0
        self._generation_read = -math.inf
        self._last_error_log = self._last_rejected_log = -math.inf
        self.errors = 0
        config = region_config(settings)
        serializing = {}
        if self.blocking:
            serializing = {"serializer": orjson.dumps, "deserializer": _loads}
            sealer = Sealer(derive_key(secret, f"falcon-oauth {KEY_FORMAT} cache values"))
            config["cache.wrap"] = [SealingProxy(sealer, self._rejected)]
        self.region = make_region(key_mangler=self.key, **serializing).configure_from_config(config, "cache.")
        self._purges: SharedPurges | None = None
        if settings.cache_backend == "memory":
            entries = self.region.backend._cache
            self._purges = SharedPurges(self._digest("purges")[:16], entries.clear,
                                        lambda key: entries.pop(key, None))

    def _digest(self, message: str) -> str:
        mac = self._mac.copy()
        mac.update(message.encode())
        return mac.hexdigest()

    def key(self, token: str) -> str:
        """The cache key of a token: no token can be recovered from it."""
        return f"{KEY_FORMAT}:" + self._digest(f"{self._generation}\0{token}")

    def _refresh_generation(self) -> None:
        """memcached: re-read the generation that ``clear()`` bumps, at most once a second (so a purge of
        every entry reaches the other instances within a second). Network I/O: only from ``get``."""
        now = time.monotonic()
        if now - self._generation_read >= GENERATION_REFRESH:
            self._generation_read = now
            try:
                self._generation = int(self.region.actual_backend.client.get(self._generation_key) or 0)
            except Exception as exc:  # a fault (or a value that is not a number) reads as "no change"
                self._report(exc)

    def _report(self, exc: BaseException) -> None:
        self.errors += 1
        CACHE_ERRORS.inc()
        now = time.monotonic()
        if now - self._last_error_log >= LOG_INTERVAL:
            self._last_error_log = now
            log.warning("cache backend %s failed (%s); answering from the authorization server",
                        self.backend_name, type(exc).__name__)

    def _rejected(self) -> None:
        """A memcached value that did not open: read as a miss, never as a verdict."""
        CACHE_REJECTED.inc()
        now = time.monotonic()
        if now - self._last_rejected_log >= LOG_INTERVAL:
            self._last_rejected_log = now
            log.warning("a memcached value failed authentication (forged, altered or copied from another key, "
                        "or sealed under another CACHE_KEY_SECRET) and was read as a miss; "
                        "counted in falcon_oauth_cache_rejected_values_total")

    def ttl(self, record: Introspected) -> float:
        return cache_ttl(record, self._clock(), self._ttl, self._negative_ttl)

    def get(self, token: str) -> Introspected | None:
        if not self.blocking:  # memory: the record itself, as this process stored it, read straight from the
            # backend: the region's expiry and invalidation, its extra work per read, are not used here
            if self._purges is not None:
                self._purges.catch_up()
            value = self.region.backend.get(self.key(token))
            if value is NO_VALUE:
                return None
            record, expires_at = value.payload
            return record if expires_at > self._clock() else None
        self._refresh_generation()
        try:
            value = self.region.get(token)
        except Exception as exc:
            self._report(exc)
            return None
        if value is NO_VALUE:
            return None
        try:  # opened, so sealed by a holder of the secret; checked all the same
            record = Introspected.from_json(value["record"])
            expires_at, stored_at = float(value["expires_at"]), float(value["stored_at"])
        except (TypeError, KeyError, ValueError, OverflowError):
            return None
        now = self._clock()
        # never past CACHE_TTL (inactive: CACHE_NEGATIVE_TTL) from when it was stored; a time of storing still
        # to come counts as now
        bound = self._ttl if record.active else self._negative_ttl
        return record if now < min(expires_at, min(stored_at, now) + bound) else None

    def set(self, token: str, record: Introspected) -> None:
        ttl = self.ttl(record)
        if ttl <= 0:
            return
        now = self._clock()
        if self.blocking:
            value: Any = {"record": record.to_json(), "expires_at": now + ttl, "stored_at": now}
        else:
            value = (record, now + ttl)
        try:
            self.region.set(token, value)
        except Exception as exc:
            self._report(exc)

    def delete(self, token: str) -> bool:
        """Forget one token's entry (memory: in every worker process); False when the backend could not be
        told. pymemcache's HashClient answers its default (not an error) while it holds a server as failed, so
        memcached is pinged first."""
        if not self.ping():
            return False
        try:
            self.region.delete(token)
            if self._purges is not None:
                self._purges.post(self.key(token))
            return True
        except Exception as exc:
            self._report(exc)
            return False

    def clear(self) -> bool:
        """Forget every entry of this deployment (memory: emptied in every worker process; memcached: its
        generation bumped); False when the backend could not be told."""
        if not self.blocking:
            if self._purges is not None:
                self.region.backend._cache.clear()
                self._purges.post_all()
            return True
        if not self.ping():  # see delete()
            return False
        try:
            client = self.region.actual_backend.client
            bumped = client.incr(self._generation_key, 1)  # None: no generation yet; False: a held-failed node
            if bumped is False:
                return False
            if bumped is None:
                client.add(self._generation_key, b"1", expire=0)
        except Exception as exc:
            self._report(exc)
            return False
        self._generation_read = -math.inf
        return True

    def mutex(self, token: str) -> Any | None:
        """The backend's lock shared by every instance (memcached), or None when there is none."""
        return self.region.backend.get_mutex(self.key(token))

    def try_lock(self, mutex: Any) -> bool:
        """Take the shared lock without waiting; a fault counts as taken (go on without the lock)."""
        try:
            return bool(mutex.acquire(wait=False))
        except Exception as exc:
            self._report(exc)
            return True

    def locked(self, mutex: Any) -> bool:
        try:
            return bool(mutex.locked())
        except Exception as exc:
            self._report(exc)
            return False

    def unlock(self, mutex: Any) -> None:
        try:
            mutex.release()
        except Exception as exc:
            self._report(exc)

    def ping(self) -> bool:
        """Whether every memcached server answers a round trip now (for readiness); memory always does."""
        if not self.blocking:
            return True
        from pymemcache.client.base import Client

        for server in self._servers:
            host, _, port = server.rpartition(":")
            client = Client((host, int(port)), connect_timeout=self._socket_timeout, timeout=self._socket_timeout)
            try:
                client.version()
            except Exception as exc:
                self._report(exc)
                return False
            finally:
                client.close()
        return True

"""The verdict cache, sans-IO: two tiers in front of the authorization server, as Kong's lua-resty-mlcache has
them. L1 is a bounded LRU in this process (every backend); L2 is the shared store (memcached or Redis, a
dogpile region in ``falcon_oauth.store``); the fill (the introspection flow) is the third level.

``get_or_fill(token, fill)`` is a generator: it reads L1 itself (memory, no effect) and *yields* what needs
I/O — ``Shared`` calls on the L2 store, ``Join`` (one fill per key per process), ``Sleep`` (waiting for a peer
instance that holds the lock) — to whichever driver runs it (``falcon_oauth.drivers``).

- Keys are ``fo4:`` + a keyed BLAKE2b-256 (a MAC, RFC 7693) of the token under a key derived from
  ``CACHE_KEY_SECRET``, bound to everything that changes what is stored for a token (``binding``) and to the
  shared generation that a purge of everything replaces. No token can be recovered from a key.
- An entry is fresh until ``min(CACHE_TTL, exp)`` (inactive: ``CACHE_NEGATIVE_TTL``); with
  ``CACHE_STALE_IF_ERROR`` an active entry may then be served for that long more, never past ``exp``, and
  only while the authorization server cannot decide.
- With ``memory`` L1 is the store (a dogpile memory region behind it would be a second copy in the same
  process); with ``memcached`` or ``redis`` L1 keeps an entry at most ``CACHE_LOCAL_TTL`` seconds, so a purge
  or generation change at another instance reaches this one within that (plus a second for the generation).
- Purges reach every worker of this instance at once through ``falcon_oauth.purges`` (a shared mapping).
- L2 values are ``{"record", "fresh_until", "stale_until", "stored_at"}``; whatever a value says, it is fresh at
  most ``CACHE_TTL`` (inactive: ``CACHE_NEGATIVE_TTL``) from when it was stored, plus the stale window.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import orjson

from falcon_oauth.core import Introspected, Undecided, cache_ttl
from falcon_oauth.effects import Join, Shared, Sleep
from falcon_oauth.purges import SharedPurges
from falcon_oauth.seal import derive_key
from falcon_oauth.settings import Settings

KEY_FORMAT = "fo4"  # fo4: entries with a stale window (fo3: sealed values; fo2: JSON in the clear)
GENERATION_REFRESH = 1.0  # seconds between reads of the shared generation
HIT, MISS, STALE = "hit", "miss", "stale"
REJECTED = "\0rejected"  # what the store reads for a value that failed authentication (counted there)


# -- entries --------------------------------------------------------------------------------------------

class Entry(NamedTuple):
    record: Introspected
    fresh_until: float  # wall-clock time
    stale_until: float  # >= fresh_until; see servable_stale

    def to_json(self, stored_at: float) -> dict[str, Any]:
        return {"record": self.record.to_json(), "fresh_until": self.fresh_until,
                "stale_until": self.stale_until, "stored_at": stored_at}


class Lifetimes(NamedTuple):
    ttl: float
    negative_ttl: float
    stale: float  # CACHE_STALE_IF_ERROR

    def entry(self, record: Introspected, now: float) -> Entry | None:
        """The entry for a fresh record, or None when it must not be kept."""
        ttl = cache_ttl(record, now, self.ttl, self.negative_ttl)
        if ttl <= 0:
            return None
        stale_until = now + ttl
        if record.active and self.stale:
            exp = record.claims.get("exp", math.inf)
            stale_until = max(stale_until, min(stale_until + self.stale, exp))
        return Entry(record, now + ttl, stale_until)

    def from_json(self, value: Any, now: float) -> Entry | None:
        """An L2 value → an entry, or None for one of the wrong shape. Held to the lifetimes from when it was
        stored, whatever it says; a time of storing still to come counts as now."""
        try:
            record = Introspected.from_json(value["record"])
            fresh, stale, stored = (float(value[k]) for k in ("fresh_until", "stale_until", "stored_at"))
        except (TypeError, KeyError, ValueError, OverflowError):
            return None
        if math.isnan(fresh) or math.isnan(stale) or math.isnan(stored):
            return None
        bound = min(stored, now) + (self.ttl if record.active else self.negative_ttl)
        fresh = min(fresh, bound)
        stale = min(stale, bound + self.stale) if record.active else fresh
        return Entry(record, fresh, max(fresh, stale))


def servable_stale(entry: Entry | None, now: float) -> bool:
    """Whether an entry past its freshness may stand in while the authorization server cannot decide: an
    active record within its stale window (which never reaches past the token's ``exp``)."""
    return entry is not None and entry.record.active and now < entry.stale_until


# -- keys -----------------------------------------------------------------------------------------------

def binding(settings: Settings) -> bytes:
    """Everything that changes what is stored for a token: where and as whom the plugin asks (the service
    token's endpoint, scope and audience with CLIENT_AUTH_METHOD=bearer), what userinfo adds, and, with
    JWT_VALIDATION, what a JWT is checked against (keys, typ, algorithms, issuers, audiences). Keys are
    bound to it, so configurations that differ in any of it never share an entry."""
    jwt = [settings.jwks_url, settings.jwt_require_typ, settings.jwt_algorithms, settings.jwt_issuers,
           settings.audiences] if settings.jwt_validation else None
    return orjson.dumps([settings.introspection_url, settings.userinfo_url, settings.userinfo_required,
                         settings.oauth_client_id, settings.client_auth_method, settings.token_url,
                         settings.token_scope, settings.token_audience, jwt])


def cache_secret(settings: Settings) -> str:
    # unset, the secret comes from the client credentials: rotating the client secret rotates it too
    return settings.cache_key_secret or f"{settings.oauth_client_id}\0{settings.oauth_client_secret}"


class Keys:
    def __init__(self, settings: Settings) -> None:
        # keyed BLAKE2b (RFC 7693), a MAC by design: a fifth of HMAC-SHA256's cost here, where OpenSSL's
        # per-call set-up dominates; the keyed state is made once and copied for each key
        self._mac = hashlib.blake2b(binding(settings), digest_size=32,
                                    key=derive_key(cache_secret(settings), f"falcon-oauth {KEY_FORMAT} cache keys"))
        self.generation = ""  # the shared generation: replaced by a purge of every entry
        self.generation_key = f"{KEY_FORMAT}:gen:" + self.digest("generation")

    def digest(self, message: str) -> str:
        mac = self._mac.copy()
        mac.update(message.encode())
        return mac.hexdigest()

    def key(self, token: str) -> str:
        return f"{KEY_FORMAT}:" + self.digest(f"{self.generation}\0{token}")


# -- L1 -------------------------------------------------------------------------------------------------

class LocalCache:
    """L1: entries of this process, bounded to ``max_entries`` (least recently used goes first), each kept until
    its own time. Thread-safe: WSGI workers run threads."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Entry | None:
        with self._lock:
            held = self._data.get(key)
            if held is None:
                return None
            if now >= held[1]:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return held[0]

    def set(self, key: str, entry: Entry, keep_until: float) -> None:
        with self._lock:
            self._data[key] = (entry, keep_until)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def pop(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# -- the two tiers --------------------------------------------------------------------------------------

class VerdictCache:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.backend_name = settings.cache_backend
        self.enabled = settings.cache_backend != "null"
        self.shared = settings.cache_backend in ("memcached", "redis")
        self.lifetimes = Lifetimes(settings.cache_ttl, settings.cache_negative_ttl, settings.cache_stale_if_error)
        self.local_ttl = settings.cache_local_ttl if self.shared else math.inf
        self.lock_timeout = lock_timeout(settings)
        self.keys = Keys(settings)
        self.local = LocalCache(settings.cache_max_entries)
        self._clock = clock
        self._monotonic = monotonic
        self._generation_read = -math.inf
        self.purges = None
        if self.enabled:
            self.purges = SharedPurges(self.keys.digest("purges")[:16], self.local.clear, self.local.pop)

    def key(self, token: str) -> str:
        """The cache key of a token under the generation known now."""
        return self.keys.key(token)

    def get_or_fill(self, token: str, fill: Callable[[], Generator[Any, Any, Introspected]]
                    ) -> Generator[Any, Any, tuple[Introspected, str]]:
        """The record for ``token`` and where it came from (HIT, MISS, or STALE: the fill could not decide and
        an entry within its stale window stood in). ``fill`` is asked at most once per key at a time in this
        process and, with a shared store, once per key across instances (its distributed lock)."""
        if self.purges is not None:
            self.purges.catch_up()
        if self.shared and self._monotonic() - self._generation_read >= GENERATION_REFRESH:
            yield from self._refresh_generation()
        key = self.keys.key(token)
        now = self._clock()
        stale = entry = self.local.get(key, now)
        if entry is not None and now < entry.fresh_until:
            return entry.record, HIT
        recheck = True
        if self.shared:
            value = yield Shared("get", (key,))
            entry = self.lifetimes.from_json(value, now)
            if entry is not None and now < entry.fresh_until:
                self.local.set(key, entry, min(now + self.local_ttl, entry.stale_until))
                return entry.record, HIT
            stale = stale or entry
            recheck = value != REJECTED  # a planted value is read (and counted) once a lookup
        try:
            return (yield Join(key, lambda: self._fill(key, fill, recheck)))
        except Undecided:
            if servable_stale(stale, self._clock()):
                return stale.record, STALE
            raise

    def _fill(self, key: str, fill: Callable[[], Generator[Any, Any, Introspected]], recheck: bool = True
              ) -> Generator[Any, Any, tuple[Introspected, str]]:
        lock = None
        if self.shared:
            taken, lock = yield Shared("lock", (key,))
            if not taken:
                entry = yield from self._wait_for_peer(key)
                if entry is not None:
                    return entry.record, HIT
            elif recheck:  # a peer may have filled it between our read and our lock: read again under the lock
                now = self._clock()
                entry = self.lifetimes.from_json((yield Shared("get", (key,))), now)
                if entry is not None and now < entry.fresh_until:
                    if lock is not None:
                        yield Shared("unlock", (lock,))
                    self.local.set(key, entry, min(now + self.local_ttl, entry.stale_until))
                    return entry.record, HIT
        try:
            record = yield from fill()
        except Undecided:
            if lock is not None:
                yield Shared("unlock", (lock,))
            raise
        now = self._clock()
        entry = self.lifetimes.entry(record, now) if self.enabled else None
        if entry is None:  # not kept: and no older entry may stand in for this answer either
            self.local.pop(key)
            if self.shared:
                yield Shared("delete", (key,))
        else:
            self.local.set(key, entry, min(now + self.local_ttl, entry.stale_until))
            if self.shared:
                yield Shared("set", (key, entry.to_json(now)))
        if lock is not None:
            yield Shared("unlock", (lock,))
        return record, MISS

    def _wait_for_peer(self, key: str) -> Generator[Any, Any, Entry | None]:
        """A peer instance holds the lock: look at the store until its entry appears or the lock goes."""
        deadline = self._monotonic() + self.lock_timeout
        delay = 0.005
        while self._monotonic() < deadline:
            yield Sleep(delay)
            now = self._clock()
            entry = self.lifetimes.from_json((yield Shared("get", (key,))), now)
            if entry is not None and now < entry.fresh_until:
                self.local.set(key, entry, min(now + self.local_ttl, entry.stale_until))
                return entry
            if not (yield Shared("locked", (key,))):
                return None
            delay = min(delay * 2, 0.1)
        return None

    def _refresh_generation(self) -> Generator[Any, Any, None]:
        """Re-read the shared generation (at most once a second from lookups): a fault keeps the one known."""
        self._generation_read = self._monotonic()
        generation = yield Shared("generation", (self.keys.generation_key,))
        if generation is not None:
            self.keys.generation = generation

    def purge(self, token: str | None) -> Generator[Any, Any, bool]:
        """Forget one token's entry, or every entry (a new shared generation); False when the shared store could
        not be told. Every worker of this instance drops it from L1 before its next lookup."""
        if self.shared:
            yield from self._refresh_generation()
        if token is None:
            if self.shared:
                generation = os.urandom(8).hex()  # random, not a count: two purges at once still change it
                if not (yield Shared("set_generation", (self.keys.generation_key, generation))):
                    return False
                self.keys.generation = generation
            self.local.clear()
            if self.purges is not None:
                self.purges.post_all()
            return True
        key = self.keys.key(token)
        if self.shared and not (yield Shared("delete_checked", (key,))):
            return False
        self.local.pop(key)
        if self.purges is not None:
            self.purges.post(key)
        return True

    def health(self) -> Generator[Any, Any, tuple[bool, int]]:
        """Whether the shared store answers now, and its faults so far in this process."""
        if not self.shared:
            return True, 0
        return (yield Shared("health"))


def lock_timeout(settings: Settings) -> int:
    """How long the shared lock is held at most: as long as one introspection (and userinfo) may take."""
    calls = 2 if settings.userinfo_endpoint else 1
    return math.ceil(settings.auth_server_timeout * calls) + 1

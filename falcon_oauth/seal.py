"""Sealed cache values: what the plugin writes to memcached can be read back only by a holder of the same
secret, and only under the cache key it was written to. Nothing else in a value can be read or changed.

- ``derive_key(secret, purpose)``: one 256-bit key per purpose from ``CACHE_KEY_SECRET``, by HKDF-SHA256
  (RFC 5869); naming cache entries and sealing their values use different keys. HKDF's two HMACs are the
  standard library's, not cryptography's ``HKDF``: every cache names its entries, but only a shared one seals
  values, and loading cryptography (its own OpenSSL) costs some 8 MB resident per worker (measured on the
  shipped requirements), a sixth of an idle worker with the memory cache. The tests check it against RFC
  5869's test vectors and against cryptography's ``HKDF``.
- ``Sealer``: AES-256-GCM with the cache key as associated data. ``open`` answers None for anything it did
  not seal for that cache key: a forged, altered or truncated value, or one copied from another key.
  Each value gets a key of its own, a keyed BLAKE2b of the sealing key and 16 random bytes stored in front
  of it, so a key never seals twice and the fixed nonce is never reused: with one key and random 96-bit
  nonces, AES-GCM wears out after about 2**32 values (one repeated nonce lets a reader forge).
  Layout: salt (16 bytes) | ciphertext | tag (16 bytes).
- ``SealingProxy``: a dogpile ProxyBackend that seals every serialized value on its way to the backend and
  opens it on its way back; a value that does not open is a miss, reported to ``on_rejected``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend

SALT_BYTES = 16
_NONCE = bytes(12)  # fixed: every value is sealed under a key of its own


def derive_key(secret: str, purpose: str) -> bytes:
    """HKDF-SHA256 with no salt and 32 bytes of output (RFC 5869 §2): extract, then one block of expand."""
    # surrogateescape: a secret read from the environment may hold bytes that are not UTF-8
    prk = hmac.digest(bytes(hashlib.sha256().digest_size), secret.encode("utf-8", "surrogateescape"), "sha256")
    return hmac.digest(prk, purpose.encode() + b"\x01", "sha256")


class Sealer:
    def __init__(self, key: bytes) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aesgcm, self._invalid_tag = AESGCM, InvalidTag
        self._kdf = hashlib.blake2b(key=key, digest_size=32)

    def _aead(self, salt: bytes) -> Any:
        kdf = self._kdf.copy()
        kdf.update(salt)
        return self._aesgcm(kdf.digest())

    def seal(self, value: bytes, associated: bytes) -> bytes:
        salt = os.urandom(SALT_BYTES)
        return salt + self._aead(salt).encrypt(_NONCE, value, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes | None:
        salt, ciphertext = sealed[:SALT_BYTES], sealed[SALT_BYTES:]
        try:
            return self._aead(salt).decrypt(_NONCE, ciphertext, associated)
        except self._invalid_tag:  # also what a value too short to hold a tag gets
            return None


class SealingProxy(ProxyBackend):
    """Seals the region's serialized values (the region must have a serializer: dogpile then only calls the
    ``*_serialized`` methods). The cache key is the associated data."""

    def __init__(self, sealer: Sealer, on_rejected: Callable[[], None]) -> None:
        super().__init__()
        self.sealer = sealer
        self.on_rejected = on_rejected

    def get_serialized(self, key: str) -> Any:
        value = self.proxied.get_serialized(key)
        if value is NO_VALUE or value is None:
            return NO_VALUE
        opened = self.sealer.open(value, key.encode())
        if opened is None:
            self.on_rejected()
            return NO_VALUE
        return opened

    def set_serialized(self, key: str, value: bytes) -> None:
        self.proxied.set_serialized(key, self.sealer.seal(value, key.encode()))

    def get_serialized_multi(self, keys: Iterable[str]) -> Sequence[Any]:
        return [self.get_serialized(key) for key in keys]

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        self.proxied.set_serialized_multi({key: self.sealer.seal(value, key.encode())
                                           for key, value in mapping.items()})

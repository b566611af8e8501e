"""What the cache's protections cost per cached request, in microseconds (timeit, best of 5 runs):
``python -m bench.seal``.

- memcached: a hit opens one sealed value (``Sealer.open``), a miss seals one (``Sealer.seal``); the value is
  a realistic introspection record with userinfo claims, as dogpile serializes it. JSON encoding and
  decoding of the same value is shown beside it for scale (paid with or without sealing).
- memory: every lookup first checks the shared purge file (``SharedPurges.catch_up`` when nothing changed).
"""

from __future__ import annotations

import tempfile
import time
import timeit

import orjson

from falcon_oauth.cache import KEY_FORMAT
from falcon_oauth.purges import SharedPurges
from falcon_oauth.seal import Sealer, derive_key

NUMBER = 100_000


def record_bytes() -> bytes:
    now = time.time()
    record = {"active": True, "reason": None, "claims": {
        "sub": "user-42", "client_id": "app", "scope": "openid email profile read write", "iss": "https://auth.example.test",
        "aud": "https://api.example.test", "token_type": "Bearer", "iat": int(now), "exp": int(now) + 600,
        "email": "ada@example.test", "email_verified": True, "name": "Ada L.", "preferred_username": "ada"}}
    value = {"record": record, "expires_at": now + 300, "stored_at": now}
    return b'{"ct": %f, "v": 2}|' % now + orjson.dumps(value)


def best(fn, number: int = NUMBER) -> float:
    """Microseconds per call, the best of five runs."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    sealer = Sealer(derive_key("a-cache-key-secret", f"falcon-oauth {KEY_FORMAT} cache values"))
    key = f"{KEY_FORMAT}:" + "0" * 64
    value = record_bytes()
    sealed = sealer.seal(value, key.encode())
    payload = value.partition(b"|")[2]
    parsed = orjson.loads(payload)
    with tempfile.TemporaryDirectory() as directory:
        tempfile.tempdir = directory
        purges = SharedPurges("bench", lambda: None, lambda key: None)
        rows = [
            ("seal (memcached write)", best(lambda: sealer.seal(value, key.encode()))),
            ("open (memcached hit)", best(lambda: sealer.open(sealed, key.encode()))),
            ("JSON encode of the same value, for scale", best(lambda: orjson.dumps(parsed))),
            ("JSON decode of the same value, for scale", best(lambda: orjson.loads(payload))),
            ("purge check per memory lookup, nothing purged", best(purges.catch_up)),
        ]
        tempfile.tempdir = None
    print(f"value: {len(value)} bytes, sealed: {len(sealed)} bytes")
    for name, micros in rows:
        print(f"{name:48} {micros:6.2f} µs")


if __name__ == "__main__":
    main()

"""The sans-IO core of local JWT access-token validation (RFC 9068, following RFC 8725's best practices).

- ``looks_like_jws``: whether a token is a JWS compact serialization at all; one that is not goes to
  introspection as before.
- ``KeySet.from_jwks``: a JWKS document → the keys that may verify access tokens.
- ``verify``: a token + keys + ``JwtPolicy`` + the time → an ``Introspected`` record, as introspection
  gives, so ``core.decide`` / ``core.check_policy`` and the cache apply unchanged; or ``UnknownKey``.
- ``KeyRefresh`` / ``keyset_max_age``: when to fetch the JWKS, and how often a token naming an unknown
  key may cause a refetch.

This module imports neither falcon, httpx nor dogpile, reads no clock and opens no connection: the time is
passed in (``now``: Unix time for claims; ``now_monotonic``: any monotonic clock for ``KeyRefresh``).
Parsing, JWK import and signature verification are joserfc's; nothing here does crypto by hand. joserfc is
imported where it is used, so a plugin without JWT_VALIDATION never loads it: with the cryptography it
brings, some 11 MB resident per worker (measured on the shipped requirements).

Names are as briefed; additions: ``JwtPolicy.validated()`` (ValueError for a policy that must not be
loaded), ``KeySet.fitting(alg)`` and ``len(KeySet)``, ``UnknownKey.kid``, and the size/bound constants.
``may_refetch`` reserves the refetch it allows (see ``KeyRefresh``), so concurrent requests carrying
forged ``kid`` values cause one fetch per ``min_refetch_seconds``.

Decisions the integrator must know:

- Algorithms: only ``ASYMMETRIC`` (RS*, PS*, ES*, EdDSA) can ever be used, whatever the policy lists;
  ``none`` and HS* are never selectable, and symmetric (``oct``) keys are never imported, so a token
  cannot make the verifier use a public key as an HMAC secret. ``JwtPolicy.validated`` refuses a policy
  naming anything else (call it when loading settings); ``verify`` ignores such names anyway.
- Header: ``kid`` optional (when absent, exactly one key of the set must fit the ``alg``). Refused
  (``invalid_token``): ``jku``, ``jwk``, ``x5u``, ``x5c`` (keys never come from the token), ``crit`` (no
  extension is understood), ``b64`` (RFC 7797 unencoded payloads), ``zip``/``enc`` (JWE), ``cty`` (nested
  JWTs). Other unknown parameters are ignored (RFC 7515 §4). Sizes: the token at most
  ``MAX_TOKEN_LENGTH`` characters, its header segment ``MAX_HEADER_LENGTH``, its signature segment
  ``MAX_SIGNATURE_LENGTH``.
- ``typ`` (RFC 9068 §4, RFC 8725 §3.11) is compared without case, as media types are (RFC 7515 §4.1.9
  allows the ``application/`` prefix to be omitted): ``at+jwt`` and ``application/at+jwt`` are access
  tokens. With ``require_typ`` nothing else passes (``invalid_token_type``). Without it, a missing ``typ``
  and the generic ``JWT`` / ``application/jwt`` pass too, but any other explicit type (``id_token+jwt``,
  ``logout+jwt``, ...) is still refused: it says it is not an access token.
- Claims (types as ``core.introspection_result`` checks them): ``iss`` (string, one of ``issuers``),
  ``exp`` (number, not bool), ``aud`` (string or non-empty list of strings, one in ``audiences``),
  ``sub`` (non-empty string) and ``iat`` (number) are required; ``nbf`` optional (number). ``client_id``
  and ``jti`` are RFC 9068 §2.2 REQUIRED but not among what §4 has resource servers validate, and several
  providers omit ``client_id`` (using ``azp``): they are type-checked (string) when present, not required;
  ``jti`` is not remembered (an access token is a bearer token, used many times). ``scope`` must be a
  space-separated string (RFC 9068 §2.2.3); ``username``, ``token_type``, ``azp`` strings.
- Reasons: a missing or mistyped claim, a bad signature, a refused header or ``alg``, an ``alg`` the key
  named by ``kid`` cannot verify (e.g. ES256 with an RSA key) and anything malformed →
  ``invalid_token``; then ``invalid_token_type``, ``invalid_issuer``, ``invalid_audience``,
  ``token_expired`` (``now > exp + clock_skew``), ``token_not_yet_valid`` (``nbf`` or ``iat`` later than
  ``now + clock_skew``: a token issued in the future is the issuer's clock running ahead, as with nbf).
  The signature is checked before any of the claims, so an unsigned token learns nothing of the policy.
- ``UnknownKey`` is raised when the header's ``kid`` is not in the set, or when there is no ``kid`` and no
  key of the set fits the ``alg``: a refetch (``KeyRefresh.may_refetch``) may find a rotated-in key.
  When it still fails after the refetch (or one is not allowed), the caller answers ``invalid_token``.
- JWKS: keys of unknown ``kty``, ``oct`` keys, keys whose ``use`` is not ``sig`` or whose ``key_ops`` lack
  ``verify``, RSA keys under 2048 bits, OKP keys that are not Ed25519/Ed448, and keys that carry private
  material (a published private key proves nothing: anyone can sign with it) are skipped. A document
  with no usable key is a failed fetch: it does not replace the known keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from .core import (
    INVALID_AUDIENCE,
    INVALID_ISSUER,
    INVALID_TOKEN,
    INVALID_TOKEN_TYPE,
    TOKEN_EXPIRED,
    TOKEN_NOT_YET_VALID,
    HttpRequest,
    Introspected,
)

__all__ = [
    "ASYMMETRIC", "DEFAULT_ALGORITHMS", "JwtPolicy", "KeyRefresh", "KeySet", "UnknownKey",
    "keyset_max_age", "looks_like_jws", "verify",
]

DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                        "EdDSA"})

MAX_TOKEN_LENGTH = 16384  # characters; the plugin's TOKEN_MAX_LENGTH usually cuts earlier
MAX_HEADER_LENGTH = 1024  # characters of the header segment; a real one is under 200
MAX_SIGNATURE_LENGTH = 1024  # characters of the signature segment: RSA up to 6144 bits
MAX_JWKS_BYTES = 1 << 20
MAX_JWKS_KEYS = 100
MIN_RSA_BITS = 2048
MIN_KEYSET_AGE = 60.0  # seconds; the bounds of a JWKS's Cache-Control max-age
MAX_KEYSET_AGE = 86400.0

# Header parameters that are refused outright (see the module docstring).
REFUSED_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit", "b64", "zip", "enc", "cty"})
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
GENERIC_TYPES = frozenset({"jwt", "application/jwt"})

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_NUMERIC = ("exp", "iat", "nbf")
_STRINGS = ("sub", "client_id", "scope", "iss", "jti", "username", "token_type", "azp")
_REQUIRED = ("iss", "exp", "aud", "sub", "iat")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EDDSA_CURVES = frozenset({"Ed25519", "Ed448"})


class UnknownKey(Exception):
    """The token names a key (``kid``) the key set does not hold: the caller may refetch the JWKS once
    (``KeyRefresh.may_refetch``) and verify again; otherwise the token is ``invalid_token``."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(kid)
        self.kid = kid


class JwtPolicy(NamedTuple):
    algorithms: tuple[str, ...]  # the allowed ``alg`` values; only those in ASYMMETRIC are ever used
    require_typ: bool  # typ must be at+jwt / application/at+jwt (without case)
    issuers: tuple[str, ...]  # iss must equal one exactly
    audiences: tuple[str, ...]  # aud (string or list) must contain one
    clock_skew: float  # seconds allowed on exp, nbf and iat

    def validated(self) -> JwtPolicy:
        """This policy, or ValueError saying what is wrong with it (for the settings loader)."""
        if not self.algorithms:
            raise ValueError("JWT algorithms must not be empty")
        refused = [alg for alg in self.algorithms if alg not in ASYMMETRIC]
        if refused:
            raise ValueError(f"JWT algorithms must be among {sorted(ASYMMETRIC)}; refused: {refused}")
        if not self.issuers or not all(isinstance(i, str) and i for i in self.issuers):
            raise ValueError("JWT validation needs at least one issuer")
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError("JWT validation needs at least one audience")
        if not (isinstance(self.clock_skew, int | float) and 0 <= self.clock_skew < math.inf):
            raise ValueError("JWT clock skew must be a non-negative number of seconds")
        return self


# -- the token's shape ----------------------------------------------------------------------------------

def _b64decode(segment: str) -> bytes | None:
    """Unpadded base64url (RFC 7515 §2) → bytes, or None."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _header(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        return None
    header = _json_object(_b64decode(parts[0]))
    return header if header is not None and isinstance(header.get("alg"), str) else None


def looks_like_jws(token: str) -> bool:
    """Three base64url segments, the first a JSON object with a string ``alg``. Verifies nothing."""
    return _header(token) is not None


# -- keys -----------------------------------------------------------------------------------------------

def _usable_key(data: Any) -> Any | None:
    """One JWK of a JWKS → a joserfc public key that may verify signatures, or None (skipped)."""
    if not isinstance(data, dict) or data.get("kty") not in ("RSA", "EC", "OKP"):
        return None  # "oct" (symmetric) is never imported: a JWKS is public
    if data.get("use", "sig") != "sig" or not isinstance(data.get("kid", ""), str):
        return None
    key_ops = data.get("key_ops")
    if key_ops is not None and not (isinstance(key_ops, list) and "verify" in key_ops):
        return None
    if data.get("alg") is not None and data["alg"] not in ASYMMETRIC:
        return None
    if data["kty"] == "RSA":  # before import, which warns of small keys
        modulus = _b64decode(data["n"]) if isinstance(data.get("n"), str) else None
        if modulus is None or int.from_bytes(modulus, "big").bit_length() < MIN_RSA_BITS:
            return None
    from joserfc.errors import JoseError
    from joserfc.jwk import JWKRegistry

    try:
        key = JWKRegistry.import_key(data)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    if key.is_private:
        return None
    if key.key_type == "OKP" and key.curve_name not in _EDDSA_CURVES:
        return None
    return key


def _fits(key: Any, alg: str) -> bool:
    """Whether ``key`` can verify ``alg`` (its type and curve, and its own ``alg`` when it names one)."""
    if alg not in ASYMMETRIC or key.key_type != _KEY_TYPES[alg[:2]]:
        return False
    if key.alg is not None and key.alg != alg:
        return False
    if key.key_type == "EC":
        return key.curve_name == {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
    return True


class KeySet:
    """The public signing keys of a JWKS (RFC 7517 §5), as joserfc keys. Immutable."""

    def __init__(self, keys: Iterable[Any]) -> None:
        self._keys = tuple(keys)
        self.kids: frozenset[str] = frozenset(k.kid for k in self._keys if k.kid is not None)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_jwks(cls, body: bytes) -> KeySet:
        """A JWKS document → its usable keys (see the module docstring); ValueError if it is not a JWKS.
        The result may be empty."""
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        document = _json_object(body)
        keys = document.get("keys") if document is not None else None
        if not isinstance(keys, list):
            raise ValueError("not a JWKS document: no `keys` array")
        if len(keys) > MAX_JWKS_KEYS:
            raise ValueError(f"JWKS document has more than {MAX_JWKS_KEYS} keys")
        return cls(key for key in map(_usable_key, keys) if key is not None)

    def fitting(self, alg: str) -> list[Any]:
        """The keys that can verify ``alg``."""
        return [k for k in self._keys if _fits(k, alg)]

    def find(self, kid: str | None, alg: str) -> Any | None:
        """The key that verifies a token whose header has this ``kid`` and ``alg``, or None. Without a
        ``kid``, only when exactly one key of the set fits ``alg``."""
        if kid is None:
            fitting = self.fitting(alg)
            return fitting[0] if len(fitting) == 1 else None
        return next((k for k in self._keys if k.kid == kid and _fits(k, alg)), None)


# -- verification ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _registry(algorithms: tuple[str, ...]) -> Any:  # stateless once made: one per policy
    from joserfc import jws
    from joserfc.errors import UnsupportedAlgorithmError

    class Registry(jws.JWSRegistry):
        """joserfc's JWS registry limited to the asymmetric algorithms the policy allows. ``get_alg`` is what
        joserfc asks for the token's ``alg``: anything else (``none``, HS*) is refused here, and no
        deprecation warning is raised for EdDSA on every request."""

        max_header_length = MAX_HEADER_LENGTH
        max_payload_length = MAX_TOKEN_LENGTH
        max_signature_length = MAX_SIGNATURE_LENGTH

        def get_alg(self, name: str) -> Any:
            if name not in ASYMMETRIC or name not in (self.allowed or ()) or name not in self.algorithms:
                raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
            return self.algorithms[name]

    # strict_check_header off: unknown header parameters are ignored (RFC 7515 §4); refused ones are
    # refused before joserfc sees the token.
    return Registry(algorithms=[a for a in algorithms if a in ASYMMETRIC], strict_check_header=False)


def _rejected(reason: str) -> Introspected:
    return Introspected(False, {}, reason)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _claims_problem(claims: Mapping[str, Any]) -> bool:
    """Whether a required claim is missing or any known claim has the wrong type."""
    if any(name not in claims for name in _REQUIRED):
        return True
    if any(name in claims and not _is_number(claims[name]) for name in _NUMERIC):
        return True
    if any(name in claims and not isinstance(claims[name], str) for name in _STRINGS):
        return True
    aud = claims["aud"]
    if not (isinstance(aud, str) or (isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud))):
        return True
    return not claims["sub"]


def verify(token: str, keys: KeySet, policy: JwtPolicy, now: float) -> Introspected:
    """A JWT access token → ``Introspected(True, payload)`` or ``Introspected(False, {}, reason)``.
    Raises ``UnknownKey`` when the token names a key the set does not hold. ``now``: Unix time."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return _rejected(INVALID_TOKEN)
    header = _header(token)
    if header is None or REFUSED_HEADERS & header.keys():
        return _rejected(INVALID_TOKEN)
    alg, kid, typ = header["alg"], header.get("kid"), header.get("typ")
    if alg not in ASYMMETRIC or alg not in policy.algorithms:
        return _rejected(INVALID_TOKEN)
    if not isinstance(kid, str | None) or not isinstance(typ, str | None):
        return _rejected(INVALID_TOKEN)
    key = keys.find(kid, alg)
    if key is None:
        unknown = kid not in keys.kids if kid is not None else not keys.fitting(alg)
        if unknown:
            raise UnknownKey(kid)
        return _rejected(INVALID_TOKEN)  # the named key cannot verify this alg, or no kid and several fit
    from joserfc import jws
    from joserfc.errors import JoseError

    registry = _registry(policy.algorithms)
    try:
        signed = jws.extract_compact(token.encode("ascii"), registry=registry)
        if not jws.validate_compact(signed, key, registry=registry):
            return _rejected(INVALID_TOKEN)
    except (JoseError, ValueError, TypeError, UnicodeError):
        return _rejected(INVALID_TOKEN)
    claims = _json_object(signed.payload)
    if claims is None or _claims_problem(claims):
        return _rejected(INVALID_TOKEN)
    typ_value = typ.lower() if typ is not None else None
    if typ_value not in ACCESS_TOKEN_TYPES and (policy.require_typ or typ_value not in GENERIC_TYPES | {None}):
        return _rejected(INVALID_TOKEN_TYPE)
    if claims["iss"] not in policy.issuers:
        return _rejected(INVALID_ISSUER)
    aud = claims["aud"]
    if not set([aud] if isinstance(aud, str) else aud) & set(policy.audiences):
        return _rejected(INVALID_AUDIENCE)
    skew = policy.clock_skew
    if now > claims["exp"] + skew:
        return _rejected(TOKEN_EXPIRED)
    if claims["iat"] > now + skew or ("nbf" in claims and claims["nbf"] > now + skew):
        return _rejected(TOKEN_NOT_YET_VALID)
    return Introspected(True, claims)


# -- when to fetch the JWKS -----------------------------------------------------------------------------

_DIRECTIVE = re.compile(r'\s*([A-Za-z-]+)\s*(?:=\s*("?)([^",]*)\2)?\s*')


def keyset_max_age(cache_control: str | None, default: float) -> float:
    """Seconds a fetched JWKS is good for: ``max-age`` of its Cache-Control, kept within
    [MIN_KEYSET_AGE, MAX_KEYSET_AGE]; ``no-store`` / ``no-cache`` give MIN_KEYSET_AGE (refetching on every
    request would hammer the issuer, and an unknown ``kid`` refetches anyway); otherwise ``default``.
    ``s-maxage`` is for shared caches, which this is not."""
    if not cache_control:
        return default
    max_age: float | None = None
    for part in cache_control.split(","):
        found = _DIRECTIVE.fullmatch(part)
        if found is None:
            continue
        name, value = found.group(1).lower(), found.group(3)
        if name in ("no-store", "no-cache"):
            return MIN_KEYSET_AGE
        if name == "max-age" and value is not None and value.isdigit() and max_age is None:
            max_age = float(value)
    if max_age is None:
        return default
    return min(max(max_age, MIN_KEYSET_AGE), MAX_KEYSET_AGE)


KEYS_HELD_AT_MOST = 86400.0  # seconds past the last successful JWKS fetch that failed fetches keep its keys


class KeyRefresh:
    """The state of one issuer's JWKS, without IO: the flow asks ``due`` (scheduled refresh, no keys yet),
    ``claim_refresh`` (scheduled refresh, keys held) or ``may_refetch`` (a token named an unknown ``kid``),
    sends ``request(url)`` and gives the answer to ``fetched``. Times are of a monotonic clock.

    - A successful fetch replaces the keys (old kids drop out: rotation) and schedules the next one after
      ``keyset_max_age(Cache-Control, refresh_seconds)``.
    - A failed one (non-200, not a JWKS, no usable key) keeps the known keys and is retried after
      ``min_refetch_seconds``, not before: an issuer that is down is not hammered. Keys are kept so for at
      most ``KEYS_HELD_AT_MOST`` after the last successful fetch: a failed fetch later than that drops
      them (JWTs then get 503 until a fetch succeeds).
    - ``may_refetch`` answers True at most once per ``min_refetch_seconds`` since the last fetch or granted
      refetch: a True is a promise to fetch, so concurrent requests with forged kids cause one fetch.
    """

    def __init__(self, refresh_seconds: float, min_refetch_seconds: float) -> None:
        self.refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.keys: KeySet | None = None
        self._next_refresh = -math.inf
        self._last_fetch = -math.inf
        self._last_success = -math.inf

    def due(self, now_monotonic: float) -> bool:
        """Whether a scheduled fetch is due (at once when no keys were ever fetched)."""
        return now_monotonic >= self._next_refresh

    def claim_refresh(self, now_monotonic: float) -> bool:
        """Whether a scheduled fetch is due while keys are held; a True reserves it until the fetch answers (or
        ``min_refetch_seconds`` pass), so one request refreshes and the others verify with the keys held."""
        if not self.due(now_monotonic):
            return False
        self._next_refresh = now_monotonic + self.min_refetch_seconds
        return True

    def may_refetch(self, now_monotonic: float) -> bool:
        """Whether an unknown ``kid`` may cause a fetch now; a True reserves it."""
        if now_monotonic - self._last_fetch < self.min_refetch_seconds:
            return False
        self._last_fetch = now_monotonic
        return True

    def fetched(self, status: int, body: bytes, cache_control: str | None, now_monotonic: float) -> bool:
        """Apply a fetch's answer; True when it gave new keys."""
        self._last_fetch = max(self._last_fetch, now_monotonic)
        keys = None
        if status == 200:
            try:
                keys = KeySet.from_jwks(body)
            except ValueError:
                keys = None
        if not keys:
            self._next_refresh = now_monotonic + self.min_refetch_seconds
            if now_monotonic - self._last_success > KEYS_HELD_AT_MOST:
                self.keys = None  # a key the issuer withdrew must not pass forever while its JWKS is down
            return False
        self.keys = keys
        self._last_success = now_monotonic
        self._next_refresh = now_monotonic + keyset_max_age(cache_control, self.refresh_seconds)
        return True

    def request(self, url: str) -> HttpRequest:
        return HttpRequest("GET", url, {"Accept": "application/jwk-set+json, application/json"})

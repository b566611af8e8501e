"""The sans-IO core: everything between bytes in and bytes out that needs no network, clock or framework.

- ``parse_body`` / ``parse_plugin_request``: a MockForge request (either dialect) → which token, which dialect.
- ``introspection_request`` / ``introspection_result``: the RFC 7662 call as plain data, and its answer
  turned into an ``Introspected`` record (or ``Undecided`` when the server's answer cannot be trusted).
- ``userinfo_request`` / ``merge_userinfo``: the optional OpenID Connect userinfo step.
- ``decide``: an ``Introspected`` record + the clock → a ``Verdict``; run on every request, cached or not.
- ``route_paths``: the request's path as route rules see it (canonical, or refused as ambiguous).
- ``cache_ttl``: how long an ``Introspected`` record may be kept.
- ``render_*``: a verdict or an undecided outcome → the answer in the request's dialect.

This module imports neither falcon, httpx nor dogpile; its tests need no server.
"""

from __future__ import annotations

import base64
import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit

import orjson

MAX_JSON_DEPTH = 32

# Reason codes of verdicts (HTTP 200, authenticated false) ...
MISSING_TOKEN = "missing_token"
INVALID_TOKEN = "invalid_token"
TOKEN_INACTIVE = "token_inactive"
TOKEN_EXPIRED = "token_expired"
TOKEN_NOT_YET_VALID = "token_not_yet_valid"
USERINFO_MISMATCH = "userinfo_mismatch"
USERINFO_REJECTED = "userinfo_rejected"
INSUFFICIENT_SCOPE = "insufficient_scope"
INVALID_AUDIENCE = "invalid_audience"
INVALID_ISSUER = "invalid_issuer"
INVALID_TOKEN_TYPE = "invalid_token_type"
INVALID_REQUEST_PATH = "invalid_request_path"  # ROUTES set, and the path is missing or ambiguous
INVALID_REQUEST_METHOD = "invalid_request_method"  # ROUTES set, and the method is missing or not a token
STALE_CLAIM = "falcon_oauth_stale"  # SDK dialect: the verdict came from a stale entry (CACHE_STALE_IF_ERROR)
# ... and of "cannot decide" (HTTP 503).
AUTH_SERVER_UNAVAILABLE = "auth_server_unavailable"
AUTH_SERVER_ERROR = "auth_server_error"
AUTH_SERVER_BAD_RESPONSE = "auth_server_bad_response"

# Claims that only the introspection response may set; userinfo never overrides them.
PROTECTED_CLAIMS = frozenset({"sub", "scope", "client_id", "exp", "iat", "nbf", "aud", "iss", "token_type"})

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_EMPTY: Mapping[str, Any] = MappingProxyType({})  # the default of the mappings below, shared and read-only


class Dialect(StrEnum):
    SDK = "sdk"
    HOST = "host"

    __hash__ = str.__hash__  # Enum's hashes the name, in Python, on every dict lookup


class BadRequest(Exception):
    """The plugin request itself is unusable: a 4xx, never a verdict and never a call out."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Undecided(Exception):
    """The authorization server's answer cannot be trusted either way: 503, never cached."""

    def __init__(self, code: str, detail: str = "", retry_after: int = 5, retryable: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail  # for logs: a status code or an exception class, never upstream text
        self.retry_after = retry_after
        self.retryable = retryable  # the request never reached the server: trying again is safe


# PluginRequest, Verdict and Answer are made on every request: named tuples, immutable like a frozen
# dataclass at a third of its construction cost.
class PluginRequest(NamedTuple):
    dialect: Dialect
    token: str | None
    problem: str | None = None  # why there is no usable token: MISSING_TOKEN, INVALID_TOKEN, INVALID_REQUEST_*
    method: str | None = None
    path: str | None = None  # the request target as sent, without its query; see route_paths
    request_id: str | None = None


@dataclass(frozen=True)
class HttpRequest:
    """An outgoing request as plain data; a driver sends it."""

    method: str
    url: str
    headers: Mapping[str, str]
    form: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Introspected:
    """What the authorization server said of a token: the part that may be cached. Holds no token."""

    active: bool
    claims: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why inactive
    cacheable: bool = True  # False for a refusal that may not hold seconds later (a JWT key not fetched yet)

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "claims": dict(self.claims), "reason": self.reason}

    @classmethod
    def from_json(cls, value: Any) -> Introspected:
        if not (isinstance(value, dict) and isinstance(value.get("active"), bool)
                and isinstance(value.get("claims"), dict)
                and isinstance(value.get("reason"), str | None)):
            raise ValueError("not an introspection record")
        return cls(value["active"], value["claims"], value["reason"])


class Verdict(NamedTuple):
    authenticated: bool
    reason: str | None = None
    user_id: str = ""
    claims: Mapping[str, Any] = _EMPTY
    detail: Mapping[str, Any] = _EMPTY  # e.g. the missing scopes of a rejection


# -- the request a route rule is matched against ----------------------------------------------------------

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token (tchar+)
# In the decoded path: characters that servers read differently (controls and spaces, which some trim or
# cut at; `\`, which some take for `/`; `;`, whose parameters some strip; `%` left over, which a second
# decoding turns into another escape; `?` and `#`, which a server that decodes first takes for delimiters).
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\;%?#]")
_ENCODED_SLASH_OR_DOT = re.compile(r"%2f|/(?:%2e(?:\.|%2e)?|\.%2e)(?=/|$)", re.IGNORECASE)
_SLASHES = re.compile(r"/{2,}")


def route_paths(target: str | None) -> tuple[str, ...] | None:
    """The paths a request target (origin-form, as in ``uri`` or ``context.uri``) may name, canonical first,
    or None when it is ambiguous. Its query is ignored.

    The canonical path is percent-decoded (only UTF-8), with repeated slashes collapsed and dot segments
    resolved (RFC 3986 §5.2.4). A server may skip either step, so a path with dot segments or repeated
    slashes also names its other readings; a route rule that matches any of them applies.

    Ambiguous: no leading ``/`` (``admin/x``, ``http://host/x``, ``*``); an encoded ``/``, or an encoded
    dot segment (``%2e``: a server may resolve dot segments before it decodes); anything ``_AMBIGUOUS``
    finds, raw or encoded; non-ASCII that is invisible, a space or changed by NFKC normalisation; a ``..``
    beside an empty segment (a server that merges slashes first resolves it elsewhere).
    """
    if target is None:
        return None
    path = target.partition("?")[0]
    if not path.startswith("/") or _ENCODED_SLASH_OR_DOT.search(path):
        return None
    try:
        text = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if _AMBIGUOUS.search(text) or not (text.isascii() or _plain_unicode(text)):
        return None
    if "//" not in text and "/." not in text:
        return (text,)
    if ".." in text.split("/") and "//" in text:
        return None
    resolved = _remove_dot_segments(text.split("/"))
    return tuple(dict.fromkeys((_SLASHES.sub("/", resolved), resolved, _SLASHES.sub("/", text), text)))


def _plain_unicode(text: str) -> bool:
    """No invisible or separator character, and nothing NFKC would turn into something else (a fullwidth
    ``ａ`` into ``a``, a fullwidth ``／`` into ``/``)."""
    if any(unicodedata.category(c)[0] in "CZ" for c in text if not c.isascii()):
        return False
    return unicodedata.normalize("NFKC", text) == text


def _remove_dot_segments(segments: list[str]) -> str:
    """RFC 3986 §5.2.4 for an absolute path, given split on ``/``."""
    output: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments[1:], 1):
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
            continue
        if i == last:  # `/a/..` and `/a/.` end in a slash
            output.append("")
    return "/" + "/".join(output)


# Globs are matched segment by segment, in time linear in the path: a regular expression with several
# `.*` or `[^/]*` backtracks polynomially, and a long path would hold a worker for seconds.

@functools.cache
def _glob_segments(pattern: str) -> tuple[str, ...]:
    """A rule's path as segments; a trailing slash is optional, so it is dropped."""
    return tuple(pattern.rstrip("/").split("/")[1:])


@functools.cache
def _pieces(glob: str) -> tuple[tuple[int, re.Pattern[str]], ...]:
    """One segment's glob as the pieces between its ``*``: each a fixed length, ``?`` one character."""
    return tuple((len(piece), re.compile(re.escape(piece).replace(r"\?", "."))) for piece in glob.split("*"))


def _segment_matches(glob: str, segment: str) -> bool:
    (head, first), *rest = _pieces(glob)
    if not rest:
        return first.fullmatch(segment) is not None
    *middle, (tail, last) = rest
    end = len(segment) - tail
    if end < head or not first.match(segment) or not last.fullmatch(segment, end):
        return False
    position = head
    for _, piece in middle:  # leftmost placement leaves the most room to the pieces after it
        found = piece.search(segment, position, end)
        if found is None:
            return False
        position = found.end()
    return True


def _glob_matches(globs: tuple[str, ...], path: str) -> bool:
    """``**`` is any number of segments (none included), ``*`` any run of characters within one, ``?`` one
    character. Runs through the path once, keeping the positions in ``globs`` it may have reached."""
    def closure(states: set[int]) -> set[int]:
        for i in sorted(states):
            while i < len(globs) and globs[i] == "**":
                i += 1
                states.add(i)
        return states

    states = closure({0})
    for segment in path.rstrip("/").split("/")[1:]:
        states = closure({i if globs[i] == "**" else i + 1 for i in states
                          if i < len(globs) and (globs[i] == "**" or _segment_matches(globs[i], segment))})
        if not states:
            return False
    return len(globs) in states


@dataclass(frozen=True)
class Route:
    """A per-route scope rule: requests whose path matches ``path`` (a glob: ``**`` any number of segments,
    so ``/x/**`` also covers ``/x``; ``*`` within one segment; ``?`` one character; a trailing slash optional
    on either side) and whose method is one of ``methods`` (all when empty) need every scope of ``scopes``.
    Methods are kept in upper case and compared without case, and GET brings HEAD; the path must be
    canonical, as ``route_paths`` makes request paths."""

    path: str
    scopes: tuple[str, ...]
    methods: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not all(_METHOD.fullmatch(m) for m in self.methods):
            raise ValueError("a route's methods must be HTTP method names")
        if any("**" in glob and glob != "**" for glob in _glob_segments(self.path)):
            raise ValueError("`**` in a route's path must be a whole segment")
        literal = self.path.replace("?", "_")  # the glob's `?` is one character, not a query
        if route_paths(literal) != (literal,):
            raise ValueError("a route's path must be canonical: no dot segments, `//`, escapes or `\\`")
        methods = {m.upper() for m in self.methods}
        if "GET" in methods:  # servers answer HEAD with their GET route (RFC 9110 §9.3.2)
            methods.add("HEAD")
        object.__setattr__(self, "methods", frozenset(methods))

    def matches(self, method: str, path: str) -> bool:
        """``method`` in upper case, ``path`` one of ``route_paths``."""
        return (not self.methods or method in self.methods) and _glob_matches(_glob_segments(self.path), path)


def _route_scopes(routes: tuple[Route, ...], method: str | None, path: str | None) -> tuple[str, ...] | str:
    """The scopes the route rules require of a request, or the reason the request cannot be matched: each
    reading of its path (``route_paths``) adds the scopes of the first rule it matches."""
    paths = route_paths(path)
    if paths is None:
        return INVALID_REQUEST_PATH
    if method is None or not _METHOD.fullmatch(method):
        return INVALID_REQUEST_METHOD
    method = method.upper()
    required: tuple[str, ...] = ()
    for reading in paths:
        route = next((r for r in routes if r.matches(method, reading)), None)
        if route is not None:
            required += tuple(s for s in route.scopes if s not in required)
    return required


@dataclass(frozen=True)
class Policy:
    """Local checks applied on every request, cached or not."""

    required_scopes: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    audiences: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    token_types: tuple[str, ...] = ("bearer", "access_token")

    def __post_init__(self) -> None:  # compared without case
        object.__setattr__(self, "token_types", tuple(t.lower() for t in self.token_types))


def _has_scope(held: set[str], required: str) -> bool:
    """``orders:*`` is satisfied by any held ``orders:...`` scope; anything else by itself."""
    if required.endswith(":*"):
        return any(scope.startswith(required[:-1]) for scope in held)
    return required in held


def check_policy(claims: Mapping[str, Any], policy: Policy, method: str | None,
                 path: str | None) -> tuple[str, dict[str, Any]] | None:
    """The reason (and detail) a token fails local policy, or None when it passes."""
    routed = _route_scopes(policy.routes, method, path) if policy.routes else ()
    if isinstance(routed, str):
        return routed, {}
    token_type = claims.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in policy.token_types:
        return INVALID_TOKEN_TYPE, {}
    token_use = claims.get("token_use")  # Ory Hydra names refresh tokens this way
    if token_use is not None and token_use != "access_token":
        return INVALID_TOKEN_TYPE, {}
    if policy.issuers and claims.get("iss") not in policy.issuers:
        return INVALID_ISSUER, {}
    if policy.audiences:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(audiences) & set(policy.audiences):
            return INVALID_AUDIENCE, {}
    required = policy.required_scopes + tuple(s for s in routed if s not in policy.required_scopes)
    if required:
        scope = claims.get("scope")
        held = set(scope.split()) if isinstance(scope, str) else set()
        missing = [s for s in required if not _has_scope(held, s)]
        if missing:
            return INSUFFICIENT_SCOPE, {"missing_scopes": missing}
    return None


class Answer(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = _EMPTY


# -- the plugin request ---------------------------------------------------------------------------------

def parse_body(raw: bytes) -> Any:
    """Bytes → JSON value, or BadRequest naming what is wrong."""
    if not raw.strip():
        raise BadRequest("empty_body", "the request body is empty; send a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if "recursion" in str(error):
            raise BadRequest("too_deeply_nested", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("invalid_encoding", "the request body is not valid UTF-8") from None
        raise BadRequest("invalid_json", "the request body is not valid JSON") from None
    # nesting deeper than MAX_JSON_DEPTH needs more opening brackets than that; most bodies have far fewer
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep(value, 1):
        raise BadRequest("too_deeply_nested", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _too_deep(value: Any, depth: int) -> bool:
    """Whether containers nest deeper than MAX_JSON_DEPTH; only containers are visited."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if isinstance(child, dict | list) and (depth >= MAX_JSON_DEPTH or _too_deep(child, depth + 1)):
            return True
    return False


def parse_plugin_request(body: Any, token_max_length: int, policy: Policy | None = None) -> PluginRequest:
    """Which dialect, which token. Raises BadRequest for a body of neither shape or of wrong types. With a
    ``policy`` that has route rules, a request whose method or path they cannot be matched against has no
    usable token either (its ``problem`` says why), so it is refused without a call out."""
    if not isinstance(body, dict):
        raise BadRequest("invalid_request", "the request body must be a JSON object")
    if body.get("credentials") is not None:
        request = _parse_sdk(body, token_max_length)
    else:
        context = body.get("context")
        if not ((isinstance(context, dict) and "plugin_id" in context) or "method" in body or "uri" in body):
            raise BadRequest("unknown_dialect", "expected a `credentials` object (SDK dialect) or "
                             "`context.plugin_id` / `method` / `uri` (host dialect)")
        request = _parse_host(body, token_max_length)
    if request.token is not None and policy is not None and policy.routes:
        routed = _route_scopes(policy.routes, request.method, request.path)
        if isinstance(routed, str):
            return request._replace(token=None, problem=routed)
    return request


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if value is None or value.__class__ is kind:  # the usual case, checked first
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        names = names.replace("dict", "object").replace("str", "string")
        raise BadRequest("invalid_request", f"`{where}{key}` must be {names} or null")
    return value


def _string_map(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    """An object of strings (headers, query parameters), or BadRequest naming it."""
    value = _get(obj, key, dict, where) or {}
    for item in value.values():
        if not isinstance(item, str):
            raise BadRequest("invalid_request", f"`{where}{key}` values must be strings")
    return value


def _headers(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    return {name.lower(): value for name, value in _string_map(obj, key, where).items()}


def _authorization(headers: dict[str, str]) -> str | None:
    """The ``Authorization`` header of a headers object, its name in any case (the last one, as in _headers)."""
    return next((value for name, value in reversed(headers.items()) if name.lower() == "authorization"), None)


def _parse_sdk(body: dict[str, Any], token_max_length: int) -> PluginRequest:
    credentials = _get(body, "credentials", dict, "") or {}
    context = _get(body, "context", dict, "") or {}
    method = _get(context, "method", str, "context.")
    uri = _get(context, "uri", str, "context.")
    headers = _string_map(context, "headers", "context.")
    kind = _get(credentials, "type", str, "credentials.")
    token = _get(credentials, "token", str, "credentials.")
    if token and (kind or "bearer").lower() == "bearer":
        return _with_token(Dialect.SDK, token, token_max_length, method, uri, None)
    return _with_token(Dialect.SDK, _bearer(_authorization(headers)), token_max_length, method, uri, None)


def _parse_host(body: dict[str, Any], token_max_length: int) -> PluginRequest:
    context = _get(body, "context", dict, "") or {}
    for key, kind in (("plugin_id", str), ("version", dict), ("environment", dict)):
        _get(context, key, kind, "context.")  # not used, but a host that sends them sends these types
    timeout_ms = context.get("timeout_ms")
    if timeout_ms is not None and not (isinstance(timeout_ms, int | float) and not isinstance(timeout_ms, bool)
                                       and 0 <= timeout_ms < 2**64 and timeout_ms == int(timeout_ms)):
        raise BadRequest("invalid_request", "`context.timeout_ms` must be an unsigned 64-bit integer or null")
    for key in ("client_ip", "user_agent"):
        _get(body, key, str, "")
    custom = _get(context, "custom", dict, "context.") or {}
    request_id = _get(context, "request_id", str, "context.")
    method = _get(body, "method", str, "")
    uri = _get(body, "uri", str, "")
    query = _string_map(body, "query_params", "")
    headers = _headers(body, "headers", "")
    custom_token = _get(custom, "token", str, "context.custom.")
    custom_authorization = _get(custom, "authorization", str, "context.custom.")
    query_token = query.get("access_token")
    if query_token is None and uri and "access_token=" in uri:
        target_query = uri.partition("#")[0].partition("?")[2]  # origin-form, never a URL with a host
        query_token = (parse_qs(target_query).get("access_token") or [None])[0]
    token = (_bearer(headers.get("authorization")) or custom_token or _bearer(custom_authorization)
             or query_token)
    return _with_token(Dialect.HOST, token, token_max_length, method, uri, request_id)


def _bearer(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` value (scheme in any case), else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip(" ") or ""


def _with_token(dialect: Dialect, token: str | None, max_length: int, method: str | None,
                uri: str | None, request_id: str | None) -> PluginRequest:
    path = None if uri is None else uri.partition("?")[0]
    if token is None:
        return PluginRequest(dialect, None, MISSING_TOKEN, method, path, request_id)
    if len(token) > max_length or not _B64TOKEN.fullmatch(token):
        return PluginRequest(dialect, None, INVALID_TOKEN, method, path, request_id)
    return PluginRequest(dialect, token, None, method, path, request_id)


# -- RFC 7662 introspection and OpenID Connect userinfo -------------------------------------------------

def introspection_request(url: str, client_id: str, client_secret: str, auth_method: str,
                          token: str, bearer: str | None = None) -> HttpRequest:
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    form = {"token": token, "token_type_hint": "access_token"}
    if auth_method == "client_secret_basic":
        # RFC 6749 §2.3.1: form-encode id and secret before joining them for Basic.
        pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    elif auth_method == "client_secret_post":
        form.update(client_id=client_id, client_secret=client_secret)
    elif auth_method == "bearer":  # pre-authorization: the plugin's own client_credentials token
        headers["Authorization"] = f"Bearer {bearer}"
    else:  # "none": a public client identifies itself without a secret
        form["client_id"] = client_id
    return HttpRequest("POST", url, headers, form)


def token_request(url: str, client_id: str, client_secret: str, scope: str | None,
                  audience: str | None) -> HttpRequest:
    """The client_credentials grant (RFC 6749 §4.4) that obtains the plugin's own bearer token, for
    authorization servers that protect introspection with one."""
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    if audience:
        form["audience"] = audience
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return HttpRequest("POST", url, {"Accept": "application/json",
                                     "Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")},
                       form)


def token_result(status: int, body: bytes, now: float) -> tuple[str, float]:
    """The plugin's bearer token and when to stop using it (30 s before it expires, at most an hour)."""
    answer = _json_object(body) if status == 200 else None
    token = answer.get("access_token") if answer else None
    if not isinstance(token, str) or not token:
        raise Undecided(AUTH_SERVER_ERROR, f"token endpoint status {status}")
    expires_in = answer.get("expires_in") if answer else None
    lifetime = expires_in if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else 300
    return token, now + max(min(lifetime, 3600) - 30, 1)


def display_url(url: str) -> str:
    """``url`` fit for a log line: scheme, host, port and path, without credentials, query or fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def discovery_urls(issuer: str) -> list[str]:
    """Where the metadata of ``issuer`` lives: RFC 8414 §3 (the well-known path inserted before the issuer's
    path), then OpenID Connect Discovery (appended)."""
    parts = urlsplit(issuer.rstrip("/"))
    origin = f"{parts.scheme}://{parts.netloc}"
    return [f"{origin}/.well-known/oauth-authorization-server{parts.path}",
            f"{issuer.rstrip('/')}/.well-known/openid-configuration"]


class Metadata(NamedTuple):
    endpoints: dict[str, str]  # the usable endpoints, by metadata key
    refused: dict[str, str]  # the endpoints refused, by metadata key: why


METADATA_ENDPOINTS = ("introspection_endpoint", "userinfo_endpoint", "token_endpoint", "jwks_uri")


def endpoints_from_metadata(status: int, body: bytes, issuer: str) -> Metadata | None:
    """The endpoints an authorization server's metadata names, or None when it is not usable. Its issuer
    must be the configured one (RFC 8414 §3.3), or the document is ignored. An endpoint must be an absolute
    http(s) URL without credentials, and https when the issuer is: an https issuer's metadata that sends
    tokens and the client secret over plain http is a downgrade, refused. Endpoints on another host are
    accepted (RFC 8414 allows them, and large providers use them): the document comes from the issuer
    itself, which decides every verdict anyway."""
    answer = _json_object(body) if status == 200 else None
    if not answer or str(answer.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        return None
    https = urlsplit(issuer).scheme == "https"
    endpoints, refused = {}, {}
    for key in METADATA_ENDPOINTS:
        value = answer.get(key)
        if value is not None:
            problem = _endpoint_problem(value, https)
            if problem:
                refused[key] = problem
            else:
                endpoints[key] = value
    return Metadata(endpoints, refused)


def _endpoint_problem(value: object, https: bool) -> str | None:
    """Why an endpoint named by metadata is refused, or None when it is usable."""
    try:
        parts = urlsplit(value) if isinstance(value, str) and value.isprintable() and " " not in value else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
            return "not an http(s) URL"
    except ValueError:  # a port out of range, a broken IPv6 literal
        return "not an http(s) URL"
    if https and parts.scheme != "https":
        return "plain http for an https issuer"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL"
    return None


def userinfo_request(url: str, token: str) -> HttpRequest:
    return HttpRequest("GET", url, {"Accept": "application/json", "Authorization": f"Bearer {token}"})


RETRY_STATUSES = frozenset({502, 503, 504})


def retry_delay(attempt: int, random_fraction: float) -> float:
    """Backoff before retry ``attempt`` (1, 2, ...): 50 ms doubling, with ±50 % jitter."""
    return 0.05 * 2 ** (attempt - 1) * (0.5 + random_fraction)


def retry_after(value: str | None, default: int = 5) -> int:
    """An upstream Retry-After in seconds, kept within 1..300; an HTTP date or garbage gives the default."""
    if value and value.strip().isdigit():
        return min(max(int(value.strip()), 1), 300)
    return default


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


_NUMERIC = ("exp", "iat", "nbf")
_STRINGS = ("sub", "username", "client_id", "scope", "iss", "token_type")


def introspection_result(status: int, body: bytes, retry_after_header: str | None = None) -> Introspected:
    """The introspection endpoint's answer → an ``Introspected`` record, or ``Undecided``."""
    if status != 200:
        code = AUTH_SERVER_UNAVAILABLE if status in RETRY_STATUSES else AUTH_SERVER_ERROR
        hint = ": check INTROSPECTION_ENDPOINT" if status == 404 else ""
        raise Undecided(code, f"introspection status {status}{hint}", retry_after(retry_after_header))
    answer = _json_object(body)
    if answer is None:
        raise Undecided(AUTH_SERVER_BAD_RESPONSE, "introspection answer is not a JSON object")
    active = answer.get("active")
    if not isinstance(active, bool):
        raise Undecided(AUTH_SERVER_BAD_RESPONSE, "introspection answer has no boolean `active`")
    if not active:
        return Introspected(False, {}, TOKEN_INACTIVE)
    claims = {k: v for k, v in answer.items() if k != "active"}
    for key in _NUMERIC:
        if key in claims and (isinstance(claims[key], bool) or not isinstance(claims[key], int | float)):
            raise Undecided(AUTH_SERVER_BAD_RESPONSE, f"introspection claim `{key}` is not a number")
    for key in _STRINGS:
        if key in claims and not isinstance(claims[key], str):
            raise Undecided(AUTH_SERVER_BAD_RESPONSE, f"introspection claim `{key}` is not a string")
    aud = claims.get("aud")
    if aud is not None and not (isinstance(aud, str) or
                                (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
        raise Undecided(AUTH_SERVER_BAD_RESPONSE, "introspection claim `aud` is not a string or list")
    return Introspected(True, claims)


def merge_userinfo(record: Introspected, status: int | None, body: bytes, required: bool) -> Introspected:
    """Add userinfo's claims to an active record. ``status`` None means the call failed in transport."""
    if status == 200 and (answer := _json_object(body)) is not None:
        if "sub" in answer and "sub" in record.claims and answer["sub"] != record.claims["sub"]:
            return Introspected(False, {}, USERINFO_MISMATCH)
        extra = {k: v for k, v in answer.items() if k not in PROTECTED_CLAIMS}
        return Introspected(True, {**extra, **record.claims})
    if not required:
        return record  # the verdict stands on introspection alone (e.g. client_credentials tokens)
    if status in (401, 403):
        return Introspected(False, {}, USERINFO_REJECTED)
    if status is None or status in RETRY_STATUSES:
        raise Undecided(AUTH_SERVER_UNAVAILABLE, f"userinfo status {status}")
    if status == 200:
        raise Undecided(AUTH_SERVER_BAD_RESPONSE, "userinfo answer is not a JSON object")
    raise Undecided(AUTH_SERVER_ERROR, f"userinfo status {status}")


# -- verdict and cache lifetime -------------------------------------------------------------------------

def decide(record: Introspected, now: float, clock_skew: float, policy: Policy = Policy(),
           method: str | None = None, path: str | None = None) -> Verdict:
    """The verdict for a record, checked against the clock and local policy on every request, cached or not."""
    if not record.active:
        return Verdict(False, record.reason or TOKEN_INACTIVE)
    claims = record.claims
    if "exp" in claims and now > claims["exp"] + clock_skew:
        return Verdict(False, TOKEN_EXPIRED)
    if "nbf" in claims and claims["nbf"] > now + clock_skew:
        return Verdict(False, TOKEN_NOT_YET_VALID)
    failed = check_policy(claims, policy, method, path)
    if failed is not None:
        return Verdict(False, failed[0], detail=failed[1])
    for key in ("sub", "username", "client_id"):
        if isinstance(user_id := claims.get(key), str):
            return Verdict(True, None, user_id, claims)
    return Verdict(True, None, "", claims)


def cache_ttl(record: Introspected, now: float, ttl: float, negative_ttl: float) -> float:
    """Seconds a record may be kept: never past the token's ``exp``; 0 means do not cache."""
    if not record.active:
        return max(negative_ttl, 0) if record.cacheable else 0
    if "exp" in record.claims:
        return max(min(ttl, record.claims["exp"] - now), 0)
    return max(ttl, 0)


# -- answers --------------------------------------------------------------------------------------------

def _identity(verdict: Verdict) -> dict[str, Any]:
    claims = verdict.claims

    def text(*keys: str) -> str | None:
        return next((claims[k] for k in keys if isinstance(claims.get(k), str)), None)

    def strings(key: str) -> list[str]:
        value = claims.get(key)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    return {"user_id": verdict.user_id, "username": text("username", "preferred_username"),
            "email": text("email"), "display_name": text("name"),
            "roles": strings("roles"), "groups": strings("groups"), "attributes": {}}


def render_verdict(dialect: Dialect, verdict: Verdict, metadata: Mapping[str, Any],
                   headers: Mapping[str, str] | None = None) -> Answer:
    headers = headers or _EMPTY
    if dialect is Dialect.SDK:
        claims = dict(verdict.claims) if verdict.authenticated else {"error": verdict.reason, **verdict.detail}
        if verdict.authenticated and metadata.get("cache") == "stale":  # the SDK dialect has no metadata
            claims[STALE_CLAIM] = True
        return Answer(200, {"success": True, "result": {
            "authenticated": verdict.authenticated, "user_id": verdict.user_id, "claims": claims}}, headers)
    return Answer(200, {
        "authenticated": verdict.authenticated,
        "identity": _identity(verdict) if verdict.authenticated else None,
        "claims": dict(verdict.claims) if verdict.authenticated else {},
        "metadata": {**metadata, **verdict.detail},
        "error_message": None if verdict.authenticated else verdict.reason,
    }, headers)


def render_undecided(dialect: Dialect, error: Undecided, headers: Mapping[str, str] | None = None) -> Answer:
    headers = {**(headers or {}), "Retry-After": str(error.retry_after)}
    if dialect is Dialect.SDK:
        return Answer(503, {"success": False, "error": error.code}, headers)
    return Answer(503, {"authenticated": False, "identity": None, "claims": {}, "metadata": {},
                        "error_message": error.code}, headers)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every 4xx: SDK-shaped, since the dialect may be unknown."""
    return {"success": False, "error": code, "message": message}


def parse_purge(body: Any, token_max_length: int) -> str | None:
    """``{"token": "..."}`` → that token; ``{"all": true}`` → None (every entry)."""
    if body == {"all": True}:
        return None
    if isinstance(body, dict) and set(body) == {"token"} and isinstance(body["token"], str):
        request = _with_token(Dialect.SDK, body["token"], token_max_length, None, None, None)
        if request.token is not None:
            return request.token
    raise BadRequest("invalid_request", 'expected {"token": "<access token>"} or {"all": true}')

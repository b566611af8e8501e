"""Frozen, validated settings from the environment and an optional YAML file. No I/O at import.

Precedence, lowest to highest: built-in defaults, the plugin's block in a MockForge ``config.yaml`` (or a
flat YAML file of this plugin's own keys in lower case), then the environment. Every secret may instead
come from ``NAME_FILE``, a path whose contents (stripped) are the value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from falcon_oauth import __version__
from falcon_oauth.core import Policy, Route

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "bearer", "none")
DEFAULT_INTROSPECTION_ENDPOINT = "/oauth/introspect"
CACHE_BACKENDS = ("memory", "memcached", "redis", "null")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET_KEYS = ("OAUTH_CLIENT_SECRET", "PLUGIN_API_KEY", "CACHE_KEY_SECRET")

# MockForge's plugin block (`plugins: [{id: ..., config: {...}}]`) names a few keys its own way.
MOCKFORGE_KEYS = {
    "auth_server_url": "AUTH_SERVER_URL",
    "client_id": "OAUTH_CLIENT_ID",
    "client_secret": "OAUTH_CLIENT_SECRET",
    "cache_ttl": "CACHE_TTL",
    "introspection_endpoint": "INTROSPECTION_ENDPOINT",
    "userinfo_endpoint": "USERINFO_ENDPOINT",
}


class SettingsError(ValueError):
    """A setting is missing or wrong. ``str()`` is one line naming the key and the reason, never a value."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Settings:
    auth_server_url: str
    oauth_client_id: str = "mockforge"
    oauth_client_secret: str = field(default="", repr=False)
    introspection_endpoint: str | None = None  # DEFAULT_INTROSPECTION_ENDPOINT unless discovered
    userinfo_endpoint: str | None = None
    token_endpoint: str | None = None
    token_scope: str | None = None
    token_audience: str | None = None
    oidc_discovery: bool = False
    discovery_refresh_seconds: int = 3600
    userinfo_required: bool = False
    client_auth_method: str = "client_secret_basic"
    auth_server_timeout: float = 5.0
    auth_server_retries: int = 1
    auth_server_max_inflight: int = 64
    auth_server_breaker_failures: int = 5
    auth_server_breaker_seconds: float = 5.0
    auth_server_ca_bundle: str | None = None
    auth_server_client_cert: str | None = None
    auth_server_client_key: str | None = field(default=None, repr=False)
    host: str = "0.0.0.0"
    port: int = 8080
    plugin_id: str = "auth-python-oauth"
    plugin_api_key: str | None = field(default=None, repr=False)
    metrics_require_key: bool = False
    log_level: str = "INFO"
    token_max_length: int = 4096
    clock_skew_seconds: int = 60
    max_body_bytes: int = 65536
    cache_backend: str = "memory"
    memcached_servers: tuple[str, ...] = ("127.0.0.1:11211",)
    memcached_timeout: float = 0.25
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    redis_timeout: float = 0.25
    cache_ttl: int = 300
    cache_negative_ttl: int = 10
    cache_max_entries: int = 10000
    cache_local_ttl: float = 2.0
    cache_stale_if_error: int = 0
    cache_key_secret: str | None = field(default=None, repr=False)
    required_scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    token_types: tuple[str, ...] = ("Bearer", "access_token")
    routes: tuple[Route, ...] = ()
    jwt_validation: bool = False
    jwt_require_typ: bool = True
    jwt_algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    jwks_uri: str | None = None  # discovered (jwks_uri) unless set
    jwks_refresh_seconds: int = 300
    jwks_min_refetch_seconds: int = 10
    version: str = __version__
    discovered: tuple[str, ...] = ()  # the fields discovery filled in (not read from the environment)

    @property
    def policy(self) -> Policy:
        return Policy(self.required_scopes, self.routes, self.audiences, self.issuers, self.token_types)

    @property
    def introspection_url(self) -> str:
        return _endpoint_url(self.auth_server_url, self.introspection_endpoint or DEFAULT_INTROSPECTION_ENDPOINT)

    @property
    def token_url(self) -> str | None:
        return _endpoint_url(self.auth_server_url, self.token_endpoint) if self.token_endpoint else None

    @property
    def jwks_url(self) -> str | None:
        return _endpoint_url(self.auth_server_url, self.jwks_uri) if self.jwks_uri else None

    @property
    def jwt_issuers(self) -> tuple[str, ...]:
        """The issuers a JWT's ``iss`` must equal: ``ISSUERS``, else the authorization server itself."""
        return self.issuers or (self.auth_server_url,)

    @property
    def userinfo_url(self) -> str | None:
        if not self.userinfo_endpoint:
            return None
        return _endpoint_url(self.auth_server_url, self.userinfo_endpoint)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for the log redaction safety net."""
        values = (self.oauth_client_secret, self.plugin_api_key, self.cache_key_secret,
                  urlsplit(self.redis_url).password)
        return tuple(v for v in values if v)

    def replace(self, **changes: Any) -> Settings:
        return _validated(dataclasses.replace(self, **changes))

    def operator(self) -> Settings:
        """What the operator set: these settings without what discovery filled in."""
        return dataclasses.replace(self, discovered=(), **{name: None for name in self.discovered})


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verification is always on: a private CA is added with AUTH_SERVER_CA_BUNDLE, never switched off."""
    import certifi

    context = ssl.create_default_context(cafile=settings.auth_server_ca_bundle or certifi.where())
    if settings.auth_server_client_cert:
        context.load_cert_chain(settings.auth_server_client_cert, settings.auth_server_client_key)
    return context


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint_url(base: str, endpoint: str) -> str:
    """A full URL stays as it is; a path is joined to the authorization server's URL, keeping its path."""
    if urlsplit(endpoint).scheme:
        return endpoint
    return urljoin(base.rstrip("/") + "/", endpoint.lstrip("/"))


# -- loading ------------------------------------------------------------------------------------------

_FIELDS = {f.name.upper(): f for f in dataclasses.fields(Settings) if f.name not in ("version", "discovered")}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``) and ``CONFIG_FILE``; validate them.

    ``overrides`` (field names) win over everything; the demo uses them to embed its defaults.
    """
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    config_file = _value_or_file(env, "CONFIG_FILE")
    if config_file:
        raw.update(_read_yaml(config_file, env.get("PLUGIN_ID", "auth-python-oauth"), env))
    for key in _FIELDS:
        value = _value_or_file(env, key)
        if value is not None:
            raw[key] = value
    for name, value in overrides.items():
        raw[name.upper()] = value
    if not raw.get("AUTH_SERVER_URL"):
        raise SettingsError("AUTH_SERVER_URL", "is required (the authorization server's base URL)")
    values = {_FIELDS[key].name: _convert(key, value) for key, value in raw.items() if key in _FIELDS}
    return _validated(Settings(**values))


def _value_or_file(env: Mapping[str, str], key: str) -> str | None:
    if env.get(key) not in (None, ""):
        return env[key]
    path = env.get(f"{key}_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise SettingsError(f"{key}_FILE", f"cannot be read ({exc.strerror})") from None


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in YAML strings, as MockForge expands them."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    return value


def _read_yaml(path: str, plugin_id: str, env: Mapping[str, str]) -> dict[str, Any]:
    import yaml  # imported here: settings stay import-cheap and YAML is only needed with CONFIG_FILE

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise SettingsError("CONFIG_FILE", f"cannot be read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise SettingsError("CONFIG_FILE", "is not valid YAML") from None
    if not isinstance(document, dict):
        raise SettingsError("CONFIG_FILE", "must hold a mapping")

    if isinstance(document.get("plugins"), list):  # a MockForge config.yaml
        blocks = [p for p in document["plugins"] if isinstance(p, dict) and p.get("id") == plugin_id]
        if not blocks:
            raise SettingsError("CONFIG_FILE", f"has no plugins entry with id {plugin_id!r}")
        config = blocks[0].get("config") or {}
        if not isinstance(config, dict):
            raise SettingsError("CONFIG_FILE", f"plugin {plugin_id!r} has a config that is not a mapping")
        return {
            MOCKFORGE_KEYS.get(k, str(k).upper()): _interpolate(v, env) for k, v in config.items()
        }
    return {str(k).upper(): _interpolate(v, env) for k, v in document.items()}


_KIND_NAMES = {"bool": "must be true or false", "int": "must be an integer", "float": "must be a number",
               "tuple[str, ...]": "must be a list (comma or space separated)",
               "tuple[Route, ...]": "must be a list of {path, scopes, methods} (ROUTES may be JSON)"}


def _routes(value: Any) -> tuple[Route, ...]:
    """Per-route scope rules: from YAML, or JSON text in the ROUTES variable."""
    if isinstance(value, str):
        import json

        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError
    routes = []
    for rule in value:
        if not isinstance(rule, dict) or not isinstance(rule.get("path"), str) or not rule["path"].startswith("/"):
            raise ValueError
        scopes, methods = rule.get("scopes", []), rule.get("methods", [])
        scopes = scopes.split() if isinstance(scopes, str) else scopes
        methods = methods.split() if isinstance(methods, str) else methods
        if not all(isinstance(x, str) for x in [*scopes, *methods]):
            raise ValueError
        routes.append(Route(rule["path"], tuple(scopes), frozenset(methods)))  # Route validates
    return tuple(routes)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(key: str, value: Any) -> Any:
    kind = _FIELDS[key].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(str(value).strip())
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip())
        if kind == "tuple[str, ...]":
            items = value if isinstance(value, list) else re.split(r"[,\s]+", str(value))
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "tuple[Route, ...]":
            return _routes(value)
    except ValueError:
        raise SettingsError(key, _KIND_NAMES[kind]) from None
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise SettingsError(key, "must be a string")
    return str(value)


def _validated(s: Settings) -> Settings:
    def check(ok: bool, key: str, reason: str) -> None:
        if not ok:
            raise SettingsError(key, reason)

    url = urlsplit(s.auth_server_url)
    check(url.scheme in ("http", "https") and bool(url.hostname), "AUTH_SERVER_URL",
          "must be an http(s) URL with a host")
    for key, endpoint in (("INTROSPECTION_ENDPOINT", s.introspection_endpoint),
                          ("USERINFO_ENDPOINT", s.userinfo_endpoint), ("TOKEN_ENDPOINT", s.token_endpoint),
                          ("JWKS_URI", s.jwks_uri)):
        if endpoint and urlsplit(endpoint).scheme:
            check(urlsplit(endpoint).scheme in ("http", "https") and bool(urlsplit(endpoint).hostname),
                  key, "must be a path or an http(s) URL")
    check(bool(s.oauth_client_id), "OAUTH_CLIENT_ID", "must not be empty")
    check(s.client_auth_method in CLIENT_AUTH_METHODS, "CLIENT_AUTH_METHOD",
          f"must be one of {', '.join(CLIENT_AUTH_METHODS)}")
    check(s.client_auth_method == "none" or bool(s.oauth_client_secret), "OAUTH_CLIENT_SECRET",
          f"is required with CLIENT_AUTH_METHOD={s.client_auth_method}")
    check(s.client_auth_method != "bearer" or bool(s.token_endpoint) or s.oidc_discovery, "TOKEN_ENDPOINT",
          "is required with CLIENT_AUTH_METHOD=bearer (or set OIDC_DISCOVERY=true)")
    check(60 <= s.discovery_refresh_seconds <= 86400, "DISCOVERY_REFRESH_SECONDS", "must be between 60 and 86400")
    check(0 < s.auth_server_timeout <= 120, "AUTH_SERVER_TIMEOUT", "must be between 0 and 120 seconds")
    check(0 <= s.auth_server_retries <= 5, "AUTH_SERVER_RETRIES", "must be between 0 and 5")
    check(1 <= s.auth_server_max_inflight <= 10_000, "AUTH_SERVER_MAX_INFLIGHT", "must be between 1 and 10000")
    check(0 <= s.auth_server_breaker_failures <= 1000, "AUTH_SERVER_BREAKER_FAILURES",
          "must be between 0 (off) and 1000")
    check(0 < s.auth_server_breaker_seconds <= 3600, "AUTH_SERVER_BREAKER_SECONDS",
          "must be between 0 and 3600 seconds")
    for key, path in (("AUTH_SERVER_CA_BUNDLE", s.auth_server_ca_bundle),
                      ("AUTH_SERVER_CLIENT_CERT", s.auth_server_client_cert),
                      ("AUTH_SERVER_CLIENT_KEY", s.auth_server_client_key)):
        check(path is None or os.access(path, os.R_OK), key, "must name a readable file")
    check(bool(s.auth_server_client_cert) == bool(s.auth_server_client_key), "AUTH_SERVER_CLIENT_CERT",
          "and AUTH_SERVER_CLIENT_KEY go together")
    check(0 < s.port < 65536, "PORT", "must be between 1 and 65535")
    check(s.log_level.upper() in LOG_LEVELS, "LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
    check(16 <= s.token_max_length <= 65536, "TOKEN_MAX_LENGTH", "must be between 16 and 65536")
    check(0 <= s.clock_skew_seconds <= 3600, "CLOCK_SKEW_SECONDS", "must be between 0 and 3600")
    check(1024 <= s.max_body_bytes <= 16 * 1024 * 1024, "MAX_BODY_BYTES", "must be between 1 KiB and 16 MiB")
    check(s.plugin_api_key is None or len(s.plugin_api_key) >= 16, "PLUGIN_API_KEY",
          "must be at least 16 characters")
    check(not s.metrics_require_key or bool(s.plugin_api_key), "METRICS_REQUIRE_KEY",
          "needs PLUGIN_API_KEY to be set")
    check(s.cache_backend in CACHE_BACKENDS, "CACHE_BACKEND", f"must be one of {', '.join(CACHE_BACKENDS)}")
    check(0 <= s.cache_ttl <= 86400, "CACHE_TTL", "must be between 0 and 86400 seconds")
    check(0 <= s.cache_negative_ttl <= 3600, "CACHE_NEGATIVE_TTL", "must be between 0 and 3600 seconds")
    check(1 <= s.cache_max_entries <= 10_000_000, "CACHE_MAX_ENTRIES", "must be between 1 and 10000000")
    check(0 <= s.cache_local_ttl <= 60, "CACHE_LOCAL_TTL", "must be between 0 and 60 seconds")
    check(0 <= s.cache_stale_if_error <= 86400, "CACHE_STALE_IF_ERROR", "must be between 0 (off) and 86400 seconds")
    check(0 < s.memcached_timeout <= 10, "MEMCACHED_TIMEOUT", "must be between 0 and 10 seconds")
    check(0 < s.redis_timeout <= 10, "REDIS_TIMEOUT", "must be between 0 and 10 seconds")
    if s.cache_backend == "redis":
        check(urlsplit(s.redis_url).scheme in ("redis", "rediss", "unix"), "REDIS_URL",
              "must be a redis://, rediss:// or unix:// URL")
    if s.cache_backend == "memcached":
        check(bool(s.memcached_servers), "MEMCACHED_SERVERS", "must name at least one host:port")
        for server in s.memcached_servers:
            host, _, port = server.rpartition(":")
            check(bool(host) and port.isdigit() and 0 < int(port) < 65536, "MEMCACHED_SERVERS",
                  "must be host:port[,host:port...]")
    if s.jwt_validation:
        from falcon_oauth.jwt import ASYMMETRIC  # joserfc loads only when JWTs are validated

        check(bool(s.audiences), "AUDIENCES", "is required with JWT_VALIDATION=true (a JWT must be meant for you)")
        check(bool(s.jwt_algorithms) and set(s.jwt_algorithms) <= ASYMMETRIC, "JWT_ALGORITHMS",
              f"must be among {' '.join(sorted(ASYMMETRIC))} (never none, never an HMAC algorithm)")
        check(bool(s.jwks_uri) or s.oidc_discovery, "JWKS_URI",
              "is required with JWT_VALIDATION=true (or set OIDC_DISCOVERY=true)")
    check(60 <= s.jwks_refresh_seconds <= 86400, "JWKS_REFRESH_SECONDS", "must be between 60 and 86400")
    check(1 <= s.jwks_min_refetch_seconds <= 3600, "JWKS_MIN_REFETCH_SECONDS", "must be between 1 and 3600")
    return dataclasses.replace(s, log_level=s.log_level.upper())


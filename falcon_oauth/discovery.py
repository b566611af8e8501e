"""Finding the authorization server's endpoints from its metadata (RFC 8414, then OpenID Connect
Discovery), sans-IO: ``discovery(operator, call)`` is a generator that yields the metadata requests through
``call`` (the flow's call to the authorization server) and returns the settings to use.

It runs once at start-up (``discover_at_start``: a failure with no explicit endpoint stops the service) and
again every DISCOVERY_REFRESH_SECONDS inside the flow, where a failure keeps what is known. Endpoints the
operator set always win; discovered ones are replaced by each refresh (``Settings.discovered`` records which
fields discovery filled in). The endpoints in use are logged at INFO the first time and whenever they
change, with a WARNING for each endpoint the metadata names but that is refused (see
``core.endpoints_from_metadata``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from falcon_oauth import core
from falcon_oauth.core import HttpRequest, Undecided
from falcon_oauth.effects import Busy, Http, Response
from falcon_oauth.settings import Settings, SettingsError

log = logging.getLogger("falcon_oauth.discovery")

# What discovery may fill in: the setting, and the metadata's name for it
DISCOVERABLE = (("introspection_endpoint", "introspection_endpoint"), ("userinfo_endpoint", "userinfo_endpoint"),
                ("token_endpoint", "token_endpoint"), ("jwks_uri", "jwks_uri"))

# What was last logged for each issuer in this process: the endpoints in use and the refused ones
_logged: dict[str, tuple[object, ...]] = {}

Call = Callable[[HttpRequest], Generator[Any, Any, Response]]


def discovery(operator: Settings, call: Call) -> Generator[Any, Any, Settings]:
    """``operator`` (what the operator set) with every endpoint it leaves unset taken from the metadata;
    ``SettingsError`` when no usable metadata was found."""
    tried, refused = [], {}
    for url in core.discovery_urls(operator.auth_server_url):
        tried.append(url)
        try:
            answer = yield from call(HttpRequest("GET", url, {"Accept": "application/json"}))
        except Undecided:
            continue
        metadata = core.endpoints_from_metadata(answer.status, answer.body, operator.auth_server_url)
        if metadata is None:
            continue
        refused.update(metadata.refused)
        if metadata.endpoints:
            filled = {name: metadata.endpoints[key] for name, key in DISCOVERABLE
                      if getattr(operator, name) is None and key in metadata.endpoints}
            settings = operator.replace(**filled, discovered=tuple(filled))
            for name, needed in (("introspection_endpoint", True), ("jwks_uri", operator.jwt_validation)):
                if needed and not getattr(settings, name):  # never the default path in place of a discovered one
                    raise SettingsError("OIDC_DISCOVERY", f"the metadata names no usable {name}"
                                        + "".join(f" ({reason})" for key, reason in metadata.refused.items()
                                                  if key == name))
            _log_in_use(operator.auth_server_url, settings, metadata.refused)
            return settings
    why = "".join(f"; refused its {key}: {reason}" for key, reason in refused.items())
    raise SettingsError("OIDC_DISCOVERY", f"no usable metadata for issuer {operator.auth_server_url} "
                        f"(tried {', '.join(tried)}){why}")


def _log_in_use(issuer: str, settings: Settings, refused: dict[str, str]) -> None:
    """The endpoints in use (no credentials, no query), when they differ from the last ones logged."""
    shown = {name: core.display_url(url) if url else "none" for name, url in (
        ("introspection", settings.introspection_url), ("userinfo", settings.userinfo_url),
        ("token", settings.token_url), ("jwks", settings.jwks_url))}
    state = (tuple(shown.items()), tuple(sorted(refused.items())))
    if _logged.get(issuer) == state:
        return
    _logged[issuer] = state
    log.info("endpoints in use after reading the metadata of %s: introspection %s, userinfo %s, token %s, jwks %s",
             core.display_url(issuer), shown["introspection"], shown["userinfo"], shown["token"], shown["jwks"],
             extra={"endpoints": shown})
    for key, reason in refused.items():
        log.warning("the metadata of %s names a %s that is refused (%s); it is not used",
                    core.display_url(issuer), key, reason)


def _once(timeout: float) -> Call:
    """One attempt per request, within ``timeout``: start-up has no breaker or retry budget to consult."""
    def call(request: HttpRequest) -> Generator[Any, Any, Response]:
        outcome = yield Http(request, timeout)
        if isinstance(outcome, Busy):
            raise Undecided(core.AUTH_SERVER_UNAVAILABLE, "no call slot")
        if isinstance(outcome, Undecided):
            raise outcome
        return outcome
    return call


def discover(operator: Settings) -> Settings:
    """Discovery now, in this thread."""
    from falcon_oauth.drivers import SyncDriver  # the drivers import the flows: not at module level

    return SyncDriver(operator).run(discovery(operator, _once(operator.auth_server_timeout)))


def discover_at_start(configured: Settings) -> Settings:
    """Start-up discovery: with an explicit INTROSPECTION_ENDPOINT a failure only loses userinfo and token
    endpoints; without one it is fatal."""
    if not configured.oidc_discovery:
        return configured
    try:
        return discover(configured)
    except SettingsError as error:
        if not configured.introspection_endpoint:
            raise
        log.warning("discovery failed, going on with the configured endpoints: %s", error.reason)
        return configured

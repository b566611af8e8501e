"""Finding the authorization server's endpoints from its metadata (RFC 8414, then OpenID Connect
Discovery). Run once at start-up, where a failure with no explicit endpoint stops the service, and again
every DISCOVERY_REFRESH_SECONDS by the drivers (off the event loop), where a failure keeps what is known.
The endpoints in use are logged at INFO the first time and whenever they change, with a WARNING for each
endpoint the metadata names but that is refused (see ``core.endpoints_from_metadata``)."""

from __future__ import annotations

import logging

import httpx

from falcon_oauth import core
from falcon_oauth.settings import Settings, SettingsError, ssl_context

log = logging.getLogger("falcon_oauth.discovery")

# What was last logged for each issuer in this process: the endpoints in use and the refused ones
_logged: dict[str, tuple[object, ...]] = {}


def discover(configured: Settings) -> Settings:
    """``configured`` with every endpoint it does not set explicitly taken from the metadata."""
    tried, refused = [], {}
    with httpx.Client(timeout=configured.auth_server_timeout, verify=ssl_context(configured),
                      follow_redirects=False) as client:
        for url in core.discovery_urls(configured.auth_server_url):
            tried.append(url)
            try:
                answer = client.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError:
                continue
            metadata = core.endpoints_from_metadata(answer.status_code, answer.content, configured.auth_server_url)
            if metadata is None:
                continue
            refused.update(metadata.refused)
            if metadata.endpoints:
                endpoints = metadata.endpoints
                settings = configured.replace(
                    introspection_endpoint=configured.introspection_endpoint
                    or endpoints.get("introspection_endpoint"),
                    userinfo_endpoint=configured.userinfo_endpoint or endpoints.get("userinfo_endpoint"),
                    token_endpoint=configured.token_endpoint or endpoints.get("token_endpoint"))
                if not settings.introspection_endpoint:  # never the default path in place of a discovered one
                    raise SettingsError("OIDC_DISCOVERY", "the metadata names no usable introspection_endpoint"
                                        + "".join(f" ({reason})" for key, reason in metadata.refused.items()
                                                  if key == "introspection_endpoint"))
                _log_in_use(configured.auth_server_url, settings, metadata.refused)
                return settings
    why = "".join(f"; refused its {key}: {reason}" for key, reason in refused.items())
    raise SettingsError("OIDC_DISCOVERY", f"no usable metadata for issuer {configured.auth_server_url} "
                        f"(tried {', '.join(tried)}){why}")


def _log_in_use(issuer: str, settings: Settings, refused: dict[str, str]) -> None:
    """The endpoints in use (no credentials, no query), when they differ from the last ones logged."""
    shown = {name: core.display_url(url) if url else "none" for name, url in (
        ("introspection", settings.introspection_url), ("userinfo", settings.userinfo_url),
        ("token", settings.token_url))}
    state = (tuple(shown.items()), tuple(sorted(refused.items())))
    if _logged.get(issuer) == state:
        return
    _logged[issuer] = state
    log.info("endpoints in use after reading the metadata of %s: introspection %s, userinfo %s, token %s",
             core.display_url(issuer), shown["introspection"], shown["userinfo"], shown["token"],
             extra={"endpoints": shown})
    for key, reason in refused.items():
        log.warning("the metadata of %s names a %s that is refused (%s); it is not used",
                    core.display_url(issuer), key, reason)


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

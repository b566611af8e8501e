"""Finding the authorization server's endpoints from its metadata (RFC 8414, then OpenID Connect
Discovery). Run once at start-up, where a failure with no explicit endpoint stops the service, and again
every DISCOVERY_REFRESH_SECONDS by the drivers (off the event loop), where a failure keeps what is known."""

from __future__ import annotations

import httpx

from falcon_oauth import core
from falcon_oauth.settings import Settings, SettingsError, ssl_context


def discover(configured: Settings) -> Settings:
    """``configured`` with every endpoint it does not set explicitly taken from the metadata."""
    tried = []
    with httpx.Client(timeout=configured.auth_server_timeout, verify=ssl_context(configured),
                      follow_redirects=False) as client:
        for url in core.discovery_urls(configured.auth_server_url):
            tried.append(url)
            try:
                answer = client.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError:
                continue
            endpoints = core.endpoints_from_metadata(answer.status_code, answer.content, configured.auth_server_url)
            if endpoints:
                return configured.replace(
                    introspection_endpoint=configured.introspection_endpoint
                    or endpoints.get("introspection_endpoint"),
                    userinfo_endpoint=configured.userinfo_endpoint or endpoints.get("userinfo_endpoint"),
                    token_endpoint=configured.token_endpoint or endpoints.get("token_endpoint"))
    raise SettingsError("OIDC_DISCOVERY", f"no usable metadata for issuer {configured.auth_server_url} "
                        f"(tried {', '.join(tried)})")


def discover_at_start(configured: Settings) -> Settings:
    """Start-up discovery: with an explicit INTROSPECTION_ENDPOINT a failure only loses userinfo and token
    endpoints; without one it is fatal."""
    if not configured.oidc_discovery:
        return configured
    try:
        settings = discover(configured)
    except SettingsError:
        if configured.introspection_endpoint:
            return configured
        raise
    if not settings.introspection_endpoint:
        raise SettingsError("OIDC_DISCOVERY", "the metadata names no introspection_endpoint")
    return settings

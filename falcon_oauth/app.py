"""``create_app``: the one place where settings, cache, driver and resources are wired together."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import falcon
import falcon.asgi
import orjson

from falcon_oauth import resources as r
from falcon_oauth.cache import VerdictCache
from falcon_oauth.guard import Guard
from falcon_oauth.introspect import AsyncAuthenticator, Authenticator
from falcon_oauth.settings import Settings, is_loopback

log = logging.getLogger("falcon_oauth")


def create_app(settings: Settings, *, asgi: bool, transport: Any = None) -> falcon.App:
    """The plugin as an ASGI app (``asgi=True``) or a WSGI app.

    ``transport`` replaces the HTTP transport to the authorization server (an ``httpx`` transport);
    tests use it to produce faults a real server cannot be made to.
    """
    if urlsplit(settings.introspection_url).scheme == "http" and not is_loopback(settings.introspection_url):
        log.warning("the authorization server is reached over plain http on a non-loopback address: tokens "
                    "and the client secret cross the network unencrypted; use https")
    cache = VerdictCache(settings)
    middleware: list[Any] = [Guard(settings.plugin_api_key, settings.metrics_require_key)]
    if asgi:
        driver: Any = AsyncAuthenticator(settings, cache, transport)
        middleware.insert(0, r.Lifespan(driver))
        app: falcon.App = falcon.asgi.App(middleware=middleware)
        health, ready, metrics, openapi = r.AsyncHealth, r.AsyncReady, r.AsyncMetrics, r.AsyncOpenAPI
        authenticate, purge = r.AsyncAuthenticate, r.AsyncPurge
    else:
        driver = Authenticator(settings, cache, transport)
        app = falcon.App(middleware=middleware)
        health, ready, metrics, openapi = r.Health, r.Ready, r.Metrics, r.OpenAPI
        authenticate, purge = r.Authenticate, r.Purge
    app.req_options.strip_url_path_trailing_slash = True
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)  # the profile's choice
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.set_error_serializer(r.serialize_error)
    app.add_route("/health", health(settings))
    app.add_route("/health/ready", ready(driver))
    app.add_route("/metrics", metrics())
    app.add_route("/openapi.json", openapi())
    app.add_route("/plugin/authenticate", authenticate(driver, settings.max_body_bytes))
    if settings.plugin_api_key:  # purging is only ever open to the holder of the plugin's key
        app.add_route("/plugin/cache/purge", purge(driver, settings.max_body_bytes, settings.token_max_length))
    return app

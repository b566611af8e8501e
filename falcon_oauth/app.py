"""``create_app``: the one place where settings, cache, flow, driver and resources are wired together.

A request's path through the code: ``resources`` (HTTP in and out) → the driver (``drivers``, sync or async)
running the flow's generator (``flow``: parse, cache, introspection, policy, answer) → ``cache`` (two tiers)
→ ``core`` (the plain functions every step uses). ``store`` is the shared tier's I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import falcon
import falcon.asgi
import orjson

from falcon_oauth import core
from falcon_oauth import resources as r
from falcon_oauth.cache import VerdictCache
from falcon_oauth.drivers import AsyncDriver, SyncDriver
from falcon_oauth.flow import Flow
from falcon_oauth.guard import Guard
from falcon_oauth.settings import Settings, is_loopback

log = logging.getLogger("falcon_oauth")


def create_app(settings: Settings, *, asgi: bool, transport: Any = None,
               clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
               ) -> falcon.App:
    """The plugin as an ASGI app (``asgi=True``) or a WSGI app.

    ``transport`` replaces the HTTP transport to the authorization server (an ``httpx`` transport); tests use
    it to produce faults a real server cannot be made to. ``clock`` (wall time) and ``monotonic`` let tests
    move time instead of sleeping.
    """
    if urlsplit(settings.introspection_url).scheme == "http" and not is_loopback(settings.introspection_url):
        log.warning("the authorization server is reached over plain http on a non-loopback address: tokens "
                    "and the client secret cross the network unencrypted; use https")
    cache = VerdictCache(settings, clock, monotonic)
    flow = Flow(settings, cache, clock, monotonic)
    store = None
    if cache.shared:
        from falcon_oauth.store import Store  # memcached and Redis clients load only when used

        store = Store(settings)
    middleware: list[Any] = [Guard(settings.plugin_api_key, settings.metrics_require_key)]
    if asgi:
        driver: Any = AsyncDriver(settings, store, transport)
        middleware.insert(0, r.Lifespan(driver))
        app: falcon.App = falcon.asgi.App(middleware=middleware)
        app.add_error_handler(core.BadRequest, r.bad_request_async)
    else:
        driver = SyncDriver(settings, store, transport)
        app = falcon.App(middleware=middleware)
        app.add_error_handler(core.BadRequest, r.bad_request)
    suffix = "async" if asgi else None
    app.req_options.strip_url_path_trailing_slash = True
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)  # the profile's choice
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.set_error_serializer(r.serialize_error)
    app.add_route("/health", r.Health(settings), suffix=suffix)
    app.add_route("/health/ready", r.Ready(flow, driver), suffix=suffix)
    app.add_route("/metrics", r.Metrics(), suffix=suffix)
    app.add_route("/openapi.json", r.OpenAPI(), suffix=suffix)
    app.add_route("/plugin/authenticate", r.Authenticate(flow, driver, settings.max_body_bytes), suffix=suffix)
    if settings.plugin_api_key:  # purging is only ever open to the holder of the plugin's key
        app.add_route("/plugin/cache/purge", r.Purge(flow, driver, settings.max_body_bytes,
                                                     settings.token_max_length), suffix=suffix)
    return app

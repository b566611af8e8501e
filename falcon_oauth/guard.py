"""The middleware every request passes before a resource sees it.

1. Before routing, the request target's path must be canonical, as the client sent it: one ``/`` before
   each segment, no ``.`` or ``..`` segment, nothing percent-encoded, and only characters a path may hold
   unencoded (RFC 3986 ``pchar``). Anything else is 400 ``non_canonical_path``: no path of this API needs
   another spelling, and a server or router that normalises differently cannot be steered to a resource
   this way. (Falcon's router strips leading slashes and the servers decode ``%XX`` before the app sees
   ``PATH_INFO`` or ``path``; the raw target is gunicorn's ``RAW_URI`` (uWSGI's ``REQUEST_URI``) in WSGI and
   ``raw_path`` in ASGI. A server that gives neither leaves the decoded path to check. uvicorn's httptools
   parser drops a fragment and an absolute-form's scheme and host from ``raw_path``; h11 and gunicorn keep
   them, and they are refused here.)
2. After routing, the plugin's key is checked on the route the router chose, never on the path string:
   every route under ``/plugin/``, and ``/metrics`` when ``METRICS_REQUIRE_KEY=true``. The key is
   ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time. In the host dialect
   that Authorization header is this key, never a user's token: the token is only ever read from the body.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import falcon

# A single trailing slash is allowed: the app strips it before routing (strip_url_path_trailing_slash).
CANONICAL_PATH = re.compile(r"/|(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+/?")


def _canonical(path: str) -> None:
    if not CANONICAL_PATH.fullmatch(path):
        raise falcon.HTTPError(falcon.HTTP_400, title="non_canonical_path",
                               description="the request path is not canonical: use one / between segments, "
                                           "no . or .. segments and no percent-encoding")


def _wsgi_path(req: falcon.Request) -> str:
    raw = req.env.get("RAW_URI") or req.env.get("REQUEST_URI")
    if raw is None:
        return req.env.get("PATH_INFO") or "/"
    return raw.partition("?")[0]


def _asgi_path(req: falcon.Request) -> str:
    raw = req.scope.get("raw_path")
    if raw is None:
        return req.scope.get("path") or "/"
    return raw.decode("latin-1").partition("?")[0]


class Guard:
    """Canonical paths for every request; the plugin's key (when one is set) for the routes that need it."""

    def __init__(self, api_key: str | None, metrics_require_key: bool) -> None:
        # digests of equal length: the comparison takes as long whatever the length of the value presented
        self.key = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.metrics_require_key = metrics_require_key

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        _canonical(_wsgi_path(req))

    async def process_request_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        _canonical(_asgi_path(req))

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict) -> None:
        self._check_key(req)

    async def process_resource_async(self, req: falcon.Request, resp: falcon.Response, resource: object,
                                     params: dict) -> None:
        self._check_key(req)

    def _needs_key(self, route: str | None) -> bool:
        """By the template of the route the router chose; a resource reached without one needs the key."""
        return (self.key is not None and
                (route is None or route.startswith("/plugin/") or (self.metrics_require_key and route == "/metrics")))

    def _check_key(self, req: falcon.Request) -> None:
        if self._needs_key(req.uri_template) and not self._presented(req):
            raise falcon.HTTPUnauthorized(title="unauthorized",
                                          description="this plugin needs its API key (Bearer or X-API-Key)",
                                          challenges=["Bearer"])

    def _presented(self, req: falcon.Request) -> bool:
        presented = [req.get_header("X-API-Key") or ""]
        scheme, _, credentials = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            presented.append(credentials.strip())
        ok = False
        for value in presented:
            ok |= hmac.compare_digest(hashlib.sha256(value.encode()).digest(), self.key)
        return ok

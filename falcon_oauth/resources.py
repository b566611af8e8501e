"""Falcon resources: they only translate HTTP. Read the request, hand the flow's generator for it
(``falcon_oauth.flow``) to the driver, write the answer.
"""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from falcon_oauth import core
from falcon_oauth.core import Answer
from falcon_oauth.flow import Flow
from falcon_oauth.metrics import metrics_text

ERROR_CODES = {
    400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 415: "unsupported_media_type", 500: "internal_error",
}


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every error the app raises, Falcon's own included, as one JSON shape."""
    code = error.title if error.title and " " not in error.title else ERROR_CODES.get(error.status_code, "error")
    resp.media = core.error_body(code, error.description or error.title or code)
    resp.content_type = falcon.MEDIA_JSON


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _check_body(req: falcon.Request, limit: int) -> None:
    if not _is_json(req.content_type):
        raise falcon.HTTPError(falcon.HTTP_415, title="unsupported_media_type",
                               description="send the body as Content-Type: application/json")
    length = req.content_length
    if length is not None and length > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> falcon.HTTPError:
    return falcon.HTTPError(falcon.HTTP_413, title="body_too_large",
                            description=f"the request body is over {limit} bytes")


def _checked(raw: bytes, limit: int) -> bytes:
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _read(req: falcon.Request, limit: int) -> bytes:
    """The JSON body, at most ``limit`` bytes (415 and 413 otherwise)."""
    _check_body(req, limit)
    return _checked(req.bounded_stream.read(limit + 1), limit)


async def _read_async(req: falcon.Request, limit: int) -> bytes:
    _check_body(req, limit)
    return _checked(await req.bounded_stream.read(limit + 1), limit)


def _write(resp: falcon.Response, answer: Answer) -> None:
    resp.status = answer.status
    resp.data = orjson.dumps(answer.body)  # serialised here: Falcon's media path looks up a handler per answer
    resp.content_type = falcon.MEDIA_JSON
    for name, value in answer.headers.items():
        resp.set_header(name, value)


def _purged(resp: falcon.Response, token: str | None, done: bool) -> None:
    if not done:  # never say a verdict is gone when the cache could not be told
        raise falcon.HTTPError(falcon.HTTP_503, title="cache_unavailable",
                               description="the cache backend did not answer; nothing was purged",
                               headers={"Retry-After": "5"})
    resp.media = {"purged": "all" if token is None else "token"}


def bad_request(req: falcon.Request, resp: falcon.Response, error: core.BadRequest, params: Any) -> None:
    """``core.BadRequest`` (a body that is not a plugin request) → a 4xx in the app's error shape."""
    raise falcon.HTTPError(falcon.code_to_http_status(error.status), title=error.code, description=error.message)


async def bad_request_async(req: falcon.Request, resp: falcon.Response, error: core.BadRequest,
                            params: Any) -> None:
    bad_request(req, resp, error, params)


# Each resource has ``on_*`` for WSGI and ``on_*_async`` for ASGI (Falcon's ``add_route(..., suffix="async")``):
# Falcon requires coroutines under ASGI. The two differ only by ``await`` in front of the driver.

class Health:
    def __init__(self, settings: Any) -> None:
        self.body = {"status": "healthy", "plugin": settings.plugin_id, "version": settings.version}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)


class Metrics:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = metrics_text()

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)


class OpenAPI:
    """The OpenAPI 3.1 document of this API, read once."""

    def __init__(self) -> None:
        import json
        from pathlib import Path

        import yaml

        from falcon_oauth import __version__

        document = yaml.safe_load((Path(__file__).with_name("openapi.yaml")).read_text())
        document["info"]["version"] = __version__
        self.body = json.dumps(document).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = self.body, falcon.MEDIA_JSON

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)


class Ready:
    def __init__(self, flow: Flow, driver: Any) -> None:
        self.flow, self.driver = flow, driver

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _write(resp, self.driver.run(self.flow.readiness()))

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        _write(resp, await self.driver.run(self.flow.readiness()))


class Authenticate:
    def __init__(self, flow: Flow, driver: Any, max_body_bytes: int) -> None:
        self.flow, self.driver = flow, driver
        self.limit = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = _read(req, self.limit)
        _write(resp, self.driver.run(self.flow.authenticate(raw, req.get_header("X-Request-ID"))))

    async def on_post_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = await _read_async(req, self.limit)
        _write(resp, await self.driver.run(self.flow.authenticate(raw, req.get_header("X-Request-ID"))))


class Purge:
    def __init__(self, flow: Flow, driver: Any, max_body_bytes: int, token_max_length: int) -> None:
        self.flow, self.driver = flow, driver
        self.limit = max_body_bytes
        self.token_max_length = token_max_length

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = core.parse_purge(core.parse_body(_read(req, self.limit)), self.token_max_length)
        _purged(resp, token, self.driver.run(self.flow.purge(token)))

    async def on_post_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = core.parse_purge(core.parse_body(await _read_async(req, self.limit)), self.token_max_length)
        _purged(resp, token, await self.driver.run(self.flow.purge(token)))


class Lifespan:
    """ASGI lifespan: the driver's HTTP client is opened at start-up and closed at shutdown."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def process_startup(self, scope: Any, event: Any) -> None:
        await self.driver.start()

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        await self.driver.close()

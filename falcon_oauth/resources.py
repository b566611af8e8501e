"""Falcon resources: read the request, call one driver method, write the answer. Sync and async twins.

An ASGI app refuses sync responders, so each resource comes twice; the shared translation lives in the
module's functions and the twins differ only by ``await``.
"""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from falcon_oauth import core
from falcon_oauth.core import Answer
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


def _bad_request(error: core.BadRequest) -> falcon.HTTPError:
    return falcon.HTTPError(falcon.code_to_http_status(error.status), title=error.code,
                            description=error.message)


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


class Health:
    def __init__(self, settings: Any) -> None:
        self.body = {"status": "healthy", "plugin": settings.plugin_id, "version": settings.version}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body


class AsyncHealth(Health):
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # type: ignore[override]
        resp.media = self.body


class Metrics:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = metrics_text()


class AsyncMetrics:
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = metrics_text()


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


class AsyncOpenAPI(OpenAPI):
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # type: ignore[override]
        resp.data, resp.content_type = self.body, falcon.MEDIA_JSON


class Ready:
    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _write(resp, self.driver.readiness())


class AsyncReady(Ready):
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # type: ignore[override]
        _write(resp, await self.driver.readiness())


class Authenticate:
    def __init__(self, driver: Any, max_body_bytes: int) -> None:
        self.driver = driver
        self.limit = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = _read(req, self.limit)
        try:
            _write(resp, self.driver.authenticate(raw, req.get_header("X-Request-ID")))
        except core.BadRequest as error:
            raise _bad_request(error) from None


class AsyncAuthenticate(Authenticate):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:  # type: ignore[override]
        raw = await _read_async(req, self.limit)
        try:
            _write(resp, await self.driver.authenticate(raw, req.get_header("X-Request-ID")))
        except core.BadRequest as error:
            raise _bad_request(error) from None


class Purge:
    def __init__(self, driver: Any, max_body_bytes: int, token_max_length: int) -> None:
        self.driver = driver
        self.limit = max_body_bytes
        self.token_max_length = token_max_length

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = _read(req, self.limit)
        try:
            token = core.parse_purge(core.parse_body(raw), self.token_max_length)
        except core.BadRequest as error:
            raise _bad_request(error) from None
        _purged(resp, token, self.driver.purge(token))


class AsyncPurge(Purge):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:  # type: ignore[override]
        raw = await _read_async(req, self.limit)
        try:
            token = core.parse_purge(core.parse_body(raw), self.token_max_length)
        except core.BadRequest as error:
            raise _bad_request(error) from None
        _purged(resp, token, await self.driver.purge(token))


class Lifespan:
    """ASGI lifespan: the driver's HTTP client is opened at start-up and closed at shutdown."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def process_startup(self, scope: Any, event: Any) -> None:
        await self.driver.start()

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        await self.driver.close()

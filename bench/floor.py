"""The floor: a Falcon app that parses the plugin request and answers a constant. Whatever the plugin does
beyond this is the plugin's own cost. ``uvicorn bench.floor:asgi_app`` / ``gunicorn bench.floor:wsgi_app``."""

import json

import falcon
import falcon.asgi

ANSWER = {"success": True, "result": {"authenticated": True, "user_id": "floor", "claims": {}}}


class Floor:
    def on_post(self, req, resp):
        json.loads(req.bounded_stream.read())
        resp.media = ANSWER


class AsyncFloor:
    async def on_post(self, req, resp):
        json.loads(await req.bounded_stream.read())
        resp.media = ANSWER


wsgi_app = falcon.App()
wsgi_app.add_route("/plugin/authenticate", Floor())
asgi_app = falcon.asgi.App()
asgi_app.add_route("/plugin/authenticate", AsyncFloor())

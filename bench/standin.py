"""A stand-in authorization server for the benchmark: aiohttp, one process, answers RFC 7662 introspection
after LATENCY_MS, counts calls. ``python bench/standin.py PORT LATENCY_MS [AUDIENCE]`` (with AUDIENCE, answers carry
it as ``aud``, for a plugin that checks AUDIENCES); ``GET /stats``, ``POST /reset``."""

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import parse_qs

from aiohttp import web

calls: Counter = Counter()


async def introspect(request: web.Request) -> web.Response:
    token = parse_qs((await request.read()).decode()).get("token", [""])[0]
    calls[token] += 1
    latency = request.app["latency"]
    if latency:
        await asyncio.sleep(latency)
    body = {"active": True, "sub": "bench-user", "scope": "read", "client_id": "bench", "exp": int(time.time()) + 3600}
    if request.app["audience"]:
        body["aud"] = request.app["audience"]
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"total": sum(calls.values()), "tokens": len(calls),
                              "max_per_token": max(calls.values(), default=0)})


async def reset(request: web.Request) -> web.Response:
    calls.clear()
    return web.json_response({})


def main() -> None:
    app = web.Application()
    app["latency"] = float(sys.argv[2]) / 1000
    app["audience"] = sys.argv[3] if len(sys.argv) > 3 else None
    app.add_routes([web.post("/introspect", introspect), web.get("/stats", stats), web.post("/reset", reset)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()

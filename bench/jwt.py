"""The JWT benchmark: ``python bench/jwt.py`` (``--seconds``, ``--rounds``, ``--quick``).

On uvicorn (the shipped fast stack), one worker, side by side in one run: a cached opaque token, a
repeated JWT (a cache hit too) and a new JWT for every request (one ES256 signature verification each, no
network), against the floor (bench/floor.py). The plugin runs with JWT_VALIDATION=true and its JWKS served by
a loopback thread of this script; the stand-in authorization server answers with the plugin's audience, so the
opaque token is authenticated as the JWTs are (like for like), and counts introspection calls, which JWTs must
not cause. The plugin's own counter of signature verifications is read around every run: none during the runs
of the repeated JWT, one per request during those of new JWTs. Servers on core 0, wrk on core 1; ratios are
medians of each round's ratio. Prints a Markdown table; ``--write`` puts it at the end of bench/RESULTS.md
(in place of its own section of an earlier run) and redraws bench/RESULTS.svg from it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (  # noqa: E402  (run as a script from the repository root)
    BENCH,
    LOAD_CORE,
    SERVER_CORE,
    Process,
    median_run,
    paired_ratio,
    server_argv,
    wait_for,
    write_chart,
    wrk,
)

AUDIENCE = "https://bench.example.test"
KEY = ECKey.generate_key("P-256", parameters={"kid": "bench-ec"})


SECTION = "## JWT access tokens"  # the heading of this benchmark's part of RESULTS.md


def jwks_server() -> tuple[str, ThreadingHTTPServer]:
    body = json.dumps({"keys": [KEY.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/jwks", server


def token(issuer: str, n: int) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": f"user-{n}", "client_id": "bench", "scope": "read",
              "iat": now, "exp": now + 3600, "jti": f"j{n}"}
    return jws.serialize_compact({"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid}, json.dumps(claims), KEY)


def verifications(plugin_url: str) -> float:
    """The plugin's count of JWT signature verifications so far, whatever their result."""
    text = httpx.get(f"{plugin_url}/metrics").text
    return sum(float(n) for n in re.findall(r"^falcon_oauth_jwt_verifications_total\{[^}]*\} (\S+)$", text, re.M))


def authenticated(plugin_url: str, body: dict) -> bool:
    answer = httpx.post(f"{plugin_url}/plugin/authenticate", json=body).json()
    return answer["result"]["authenticated"] is True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: check that it runs")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2, 1
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    jwks_url, jwks = jwks_server()
    standin = Process([sys.executable, str(BENCH / "standin.py"), "{port}", "0", AUDIENCE], LOAD_CORE)
    wait_for(f"{standin.url}/stats")
    issuer = standin.url
    work = Path(tempfile.mkdtemp(prefix="bench-jwt-"))
    env = {"AUTH_SERVER_URL": issuer, "INTROSPECTION_ENDPOINT": "/introspect", "OAUTH_CLIENT_SECRET": "bench-secret",
           "LOG_LEVEL": "INFO", "JWT_VALIDATION": "true", "JWKS_URI": jwks_url, "AUDIENCES": AUDIENCE,
           "JWT_ALGORITHMS": "ES256", "CACHE_MAX_ENTRIES": "200000"}
    plugin = Process(server_argv("asgi", "asgi:app"), SERVER_CORE, env)
    floor = Process(server_argv("asgi", "bench.floor:asgi_app"), SERVER_CORE)
    try:
        wait_for(f"{plugin.url}/health")
        wait_for(floor.url)
        repeated = token(issuer, 0)
        for checked in ("bench-cached-token-0123456789", repeated, token(issuer, -1)):  # as in the .lua scripts
            if not authenticated(plugin.url, {"credentials": {"type": "bearer", "token": checked}}):
                raise RuntimeError("a workload's token is not authenticated: the runs would compare rejections")
        expected_rps = 8000  # more tokens than the unique runs can use, even on a fast machine
        tokens = [token(issuer, n) for n in range(1, expected_rps * args.seconds * args.rounds + 2)]
        (work / "tokens").write_text("\n".join(tokens) + "\n")
        runs: dict[str, list[dict]] = {"floor": [], "opaque": [], "jwt": [], "unique": []}
        verified = {"jwt": 0.0, "unique": 0.0}  # signature verifications during the measured runs
        wrk_env = {"TOKEN": repeated, "TOKENS_FILE": str(work / "tokens")}
        for r in range(args.rounds):
            order = [("floor", floor, "cached.lua"), ("opaque", plugin, "cached.lua"),
                     ("jwt", plugin, "jwt_cached.lua"), ("unique", plugin, "jwt_unique.lua")]
            for name, p, script in order if r % 2 == 0 else order[::-1]:
                if name != "unique":
                    wrk(p.url + "/plugin/authenticate", script, 32, 1, wrk_env)  # warm
                before = verifications(plugin.url)
                runs[name].append(wrk(p.url + "/plugin/authenticate", script, 32, args.seconds,
                                      {**wrk_env, "TOKENS_SKIP": str(r * expected_rps * args.seconds)}))
                if name in verified:
                    verified[name] += verifications(plugin.url) - before
        stats = httpx.get(f"{standin.url}/stats").json()
    finally:
        plugin.stop()
        floor.stop()
        standin.stop()
        jwks.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    rows = [("floor (parse + constant)", median_run(runs["floor"]), ""),
            ("cached opaque token", median_run(runs["opaque"]),
             f"{paired_ratio(runs['opaque'], runs['floor']):.2f} × floor"),
            ("repeated JWT (a cache hit)", median_run(runs["jwt"]),
             f"{paired_ratio(runs['jwt'], runs['opaque']):.2f} × cached opaque"),
            ("a new JWT every request (one ES256 verification)", median_run(runs["unique"]),
             f"{paired_ratio(runs['unique'], runs['floor']):.2f} × floor")]
    table = ["| mode | workload | requests/s | p50 ms | p99 ms | non-2xx | ratio |", "|---|---|---|---|---|---|---|"]
    table += [f"| asgi | {name}, 32 conns | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']:.0f} | "
              f"{ratio} |" for name, r, ratio in rows]
    report = "\n".join([f"{SECTION} ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.rounds} "
                        f"rounds of {args.seconds} s, medians; `python bench/jwt.py`)", "", *table, "",
                        f"- introspection calls: {stats['total']}, for {stats['tokens']} distinct token(s): the "
                        f"opaque one's, and {stats['tokens'] - 1} caused by JWTs",
                        f"- JWT signature verifications during the runs of the repeated JWT: {verified['jwt']:.0f}; "
                        f"during those of a new JWT every request: {verified['unique']:.0f}, for about "
                        f"{sum(r['rps'] for r in runs['unique']) * args.seconds:.0f} requests (requests/s × s)", ""])
    print(report)
    if args.write and not args.quick:
        results = BENCH / "RESULTS.md"
        earlier = results.read_text()
        if SECTION in earlier:  # this benchmark's section of an earlier run is replaced, not repeated
            earlier = earlier[:earlier.index(SECTION)].rstrip("\n") + "\n"
        results.write_text(earlier + "\n" + report)
        write_chart(results.read_text())  # its bars are RESULTS.md's rows, these included


if __name__ == "__main__":
    main()

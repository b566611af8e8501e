"""The falcon-oauth benchmark: ``python bench/run.py`` (``--seconds``, ``--rounds``; ``--quick`` for a smoke run).

Starts a stand-in authorization server (aiohttp, configurable latency), the plugin in each mode as it ships
(``uvicorn asgi:app`` on httptools and uvloop without an access log, one worker; ``gunicorn`` with the
shipped settings, ``python:falcon_oauth.gunicorn_conf``, one worker) and the floor (a Falcon app that parses
the plugin request and answers a constant) under the same server and flags, and a memcached for the plugin
with ``CACHE_BACKEND=memcached``. Servers run on core 0, on a Python with requirements.txt alone
(bench/.venv, made on first use); the load generator (wrk), the stand-in and memcached on core 1. A and B
are alternated and medians reported, so the ratios of one run are what counts, not absolute numbers across
runs. Each ratio is the median of the ratios of one round (A and B measured back to back): this shared
machine's speed drifts by a third within minutes, which a ratio of two medians taken minutes apart would
carry.

Prints a Markdown table and writes it, with the date and the core count, to bench/RESULTS.md (keeping the
sections other benchmarks append, such as ``bench/jwt.py``'s), and a chart of its requests/s beside it,
bench/RESULTS.svg (``--chart`` redraws the chart from RESULTS.md without running).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SERVER_CORE, LOAD_CORE = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Process:
    def __init__(self, argv: list[str], core: str, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        argv = [a.format(port=self.port) for a in argv]
        # each gunicorn its own Prometheus directory (the shipped settings empty it when the master starts);
        # uvicorn's one process counts in memory, as it ships
        self.prom = tempfile.mkdtemp(prefix="bench-prom-") if "gunicorn" in argv else None
        env = {**({"PROMETHEUS_MULTIPROC_DIR": self.prom} if self.prom else {}), **(env or {})}
        self.popen = subprocess.Popen(["taskset", "-c", core, *argv], cwd=ROOT, env={**os.environ, **env},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def worker_pid(self) -> int:
        """The process that serves: gunicorn's one worker, else the process itself."""
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split()
        return int(children[0]) if children else self.popen.pid

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.worker_pid()}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        if self.prom:
            shutil.rmtree(self.prom, ignore_errors=True)


SHIPPED = BENCH / ".venv"


def shipped_python() -> str:
    """A Python with requirements.txt alone (bench/.venv, made on first use): what the servers run on. The
    test requirements bring more into a process (httpx, for one, then loads its command line's rich and
    pygments), which memory figures must not count."""
    python = SHIPPED / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SHIPPED)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")], check=True)
    return str(python)


def server_argv(mode: str, app: str) -> list[str]:
    """The server as it ships, one worker, on the shipped requirements. The floor runs under the same command:
    the gunicorn settings check the plugin's settings in the master, so a floor under gunicorn gets the
    plugin's environment too."""
    py = shipped_python()
    if mode == "asgi":
        return [py, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
                "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    return [py, "-m", "gunicorn", "-c", "python:falcon_oauth.gunicorn_conf", app, "-b", "127.0.0.1:{port}",
            "--workers", "1", "--log-level", "warning", "--backlog", "2048"]


APPS = {"asgi": ("asgi:app", "bench.floor:asgi_app"), "wsgi": ("wsgi:app", "bench.floor:wsgi_app")}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, script: str, connections: int, seconds: int, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", str(BENCH / script), url], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=seconds + 60).stdout
    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
        return float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": latency("50"),
            "p99": latency("99"), "non2xx": int(errors.group(1)) if errors else 0}


def median_run(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def paired_ratio(runs: list[dict], bases: list[dict]) -> float:
    """The median over rounds of requests/s divided by the same round's base."""
    return statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, bases, strict=True))


def spray_tokens(plugin: str, standin: str, count: int, prefix: str, seconds: int) -> int:
    """Distinct tokens sent to ``plugin`` until the stand-in has seen ``count`` more (at most 20 wrk runs)."""
    start = httpx.get(f"{standin}/stats").json()["tokens"]
    for part in range(20):
        if httpx.get(f"{standin}/stats").json()["tokens"] - start >= count:
            break
        wrk(plugin + "/plugin/authenticate", "unique.lua", 32, seconds, {"TOKEN_PREFIX": f"{prefix}{part}"})
    return httpx.get(f"{standin}/stats").json()["tokens"] - start


async def herd(url: str, token: str, n: int) -> list[int]:
    body = {"credentials": {"type": "bearer", "token": token}}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        answers = await asyncio.gather(*(client.post(f"{url}/plugin/authenticate", json=body) for _ in range(n)))
    return [a.status_code for a in answers]


def table_rows(results: str) -> list[tuple[str, str, float, str]]:
    """(mode, workload, requests/s, ratio) of each row of a RESULTS.md table."""
    rows = []
    for line in results.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in APPS:
            rows.append((cells[0], cells[1], float(cells[2]), cells[6]))
    return rows


def chart(rows: list[tuple[str, str, float, str]], title: str) -> str:
    """An SVG bar chart of requests/s, a bar per row (mode colours, ratio beside the number); no dependency."""
    label_width, bar_width, row_height, top = 560, 340, 22, 40
    width, height = label_width + bar_width + 150, top + row_height * len(rows) + 20
    most = max((rps for _, _, rps, _ in rows), default=1) or 1
    colours = {"asgi": "#3b75af", "wsgi": "#ef8636"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="22" font-size="14" font-weight="bold">{escape(title)}</text>']
    for n, (mode, workload, rps, ratio) in enumerate(rows):
        y = top + n * row_height
        length = round(bar_width * rps / most, 1)
        note = f"{rps:.0f}/s" + (f" ({ratio})" if ratio else "")
        out += [f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{escape(f"{mode}: {workload}")}</text>',
                f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length}" height="{row_height - 6}" '
                f'fill="{colours.get(mode, "gray")}"><title>{escape(note)}</title></rect>',
                f'<text x="{label_width + length + 6}" y="{y + 14}">{escape(note)}</text>']
    return "\n".join([*out, "</svg>", ""])


def write_chart(results: str) -> None:
    """bench/RESULTS.svg: the requests/s of a RESULTS.md, titled with its first line."""
    title = results.splitlines()[0].lstrip("# ") + ": requests/s"
    (BENCH / "RESULTS.svg").write_text(chart(table_rows(results), title))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per comparison")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: check that it runs")
    parser.add_argument("--chart", action="store_true", help="only redraw bench/RESULTS.svg from bench/RESULTS.md")
    args = parser.parse_args()
    if args.chart:
        write_chart((BENCH / "RESULTS.md").read_text())
        return
    if args.quick:
        args.seconds, args.rounds = 2, 1
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    standins = {latency: Process([sys.executable, str(BENCH / "standin.py"), "{port}", str(latency)], LOAD_CORE)
                for latency in (0, 50)}
    memcached = Process(["memcached", "-l", "127.0.0.1", "-p", "{port}", "-U", "0", "-m", "256", "-u", "root"],
                        LOAD_CORE)
    for s in standins.values():
        wait_for(f"{s.url}/stats")
    rows: list[tuple[str, str, dict, str]] = []
    notes: list[str] = []
    try:
        for mode in ("asgi", "wsgi"):
            plugin_app, floor_app = APPS[mode]
            env = {"AUTH_SERVER_URL": standins[0].url, "INTROSPECTION_ENDPOINT": "/introspect",
                   "OAUTH_CLIENT_SECRET": "bench-secret", "LOG_LEVEL": "INFO"}
            plugin = Process(server_argv(mode, plugin_app), SERVER_CORE, env)
            quiet = Process(server_argv(mode, plugin_app), SERVER_CORE, {**env, "LOG_LEVEL": "WARNING"})
            pooled = Process(server_argv(mode, plugin_app), SERVER_CORE,
                             {**env, "CACHE_BACKEND": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{memcached.port}"})
            floor = Process(server_argv(mode, floor_app), SERVER_CORE, env)
            slow_env = {**env, "AUTH_SERVER_URL": standins[50].url}
            slow_plugin = Process(server_argv(mode, plugin_app), SERVER_CORE, slow_env)
            spray = Process(server_argv(mode, plugin_app), SERVER_CORE, {**env, "CACHE_MAX_ENTRIES": "5000"})
            try:
                for p in (plugin, quiet, pooled, floor, slow_plugin, spray):
                    wait_for(f"{p.url}/health" if p is not floor else p.url)
                idle = plugin.rss_mb()
                # cached: the plugin (memory cache at INFO and WARNING, memcached at INFO) and the floor alternated
                runs = {"plugin": [], "quiet": [], "pooled": [], "floor": []}
                for r in range(args.rounds):
                    order = [("floor", floor), ("plugin", plugin), ("quiet", quiet), ("pooled", pooled)]
                    for name, p in order if r % 2 == 0 else order[::-1]:
                        wrk(p.url + "/plugin/authenticate", "cached.lua", 32, 1)  # warm
                        runs[name].append(wrk(p.url + "/plugin/authenticate", "cached.lua", 32, args.seconds))
                rows.append((mode, "floor (parse + constant), 32 conns", median_run(runs["floor"]), ""))
                for name, label in (("plugin", "cached token, LOG_LEVEL=INFO (a log line per decision)"),
                                    ("quiet", "cached token, LOG_LEVEL=WARNING")):
                    ratio = f"{paired_ratio(runs[name], runs['floor']):.2f} × floor"
                    rows.append((mode, f"{label}, 32 conns", median_run(runs[name]), ratio))
                ratio = f"{paired_ratio(runs['pooled'], runs['plugin']):.2f} × memory"
                rows.append((mode, "cached token, CACHE_BACKEND=memcached, LOG_LEVEL=INFO, 32 conns",
                             median_run(runs["pooled"]), ratio))
                # unique tokens, authorization server at 0 ms
                unique0 = median_run([wrk(plugin.url + "/plugin/authenticate", "unique.lua", 32, args.seconds,
                                          {"TOKEN_PREFIX": f"{mode}0r{r}"}) for r in range(args.rounds)])
                rows.append((mode, "unique tokens, server at 0 ms, 32 conns", unique0, ""))
                loaded = plugin.rss_mb()
                # unique tokens, authorization server at 50 ms, against the stand-in served directly
                direct, unique50 = [], []
                for r in range(args.rounds):
                    pair = [(direct, standins[50].url + "/introspect", "standin.lua"),
                            (unique50, slow_plugin.url + "/plugin/authenticate", "unique.lua")]
                    for n, (runs_of, url, script) in enumerate(pair if r % 2 == 0 else pair[::-1]):
                        runs_of.append(wrk(url, script, 32, args.seconds, {"TOKEN_PREFIX": f"{mode}50r{r}n{n}"}))
                rows.append((mode, "stand-in at 50 ms served directly, 32 conns", median_run(direct), ""))
                rows.append((mode, "unique tokens, server at 50 ms, 32 conns", median_run(unique50),
                             f"{paired_ratio(unique50, direct):.2f} × direct"))
                # herd: 200 concurrent requests for one new token
                httpx.post(f"{standins[50].url}/reset")
                statuses = asyncio.run(herd(slow_plugin.url, f"herd-{mode}-{time.time()}", 200))
                calls = httpx.get(f"{standins[50].url}/stats").json()["max_per_token"]
                notes.append(f"{mode}: herd of 200 concurrent requests for one new token → {calls} introspection "
                             f"call(s), {statuses.count(200)}/200 answered 200")
                # memory: a spray of unique tokens against CACHE_MAX_ENTRIES=5000
                # past CACHE_MAX_ENTRIES first, so that the cache is full; then tens of thousands more
                spray_seconds = args.seconds if args.quick else 10
                spray_tokens(spray.url, standins[0].url, 100 if args.quick else 6000, f"s{mode}a", spray_seconds)
                full = spray.rss_mb()
                sprayed = spray_tokens(spray.url, standins[0].url, 100 if args.quick else 30000, f"s{mode}b",
                                       spray_seconds)
                notes.append(f"{mode}: RSS idle {idle:.1f} MB, after the cached and unique runs {loaded:.1f} MB; "
                             f"CACHE_MAX_ENTRIES=5000: {full:.1f} MB once full, {spray.rss_mb():.1f} MB after "
                             f"{sprayed} more distinct tokens")
            finally:
                for p in (plugin, quiet, pooled, floor, slow_plugin, spray):
                    p.stop()
    finally:
        for s in (*standins.values(), memcached):
            s.stop()

    table = ["| mode | workload | requests/s | p50 ms | p99 ms | non-2xx | ratio |", "|---|---|---|---|---|---|---|"]
    for mode, name, r, ratio in rows:
        table.append(f"| {mode} | {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']:.0f} "
                     f"| {ratio} |")
    report = "\n".join([
        f"# Benchmark results ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"{args.rounds} rounds of {args.seconds} s, medians)", "",
        "Servers on core 0; wrk, the stand-in authorization server and memcached on core 1. `python bench/run.py`.",
        "uvicorn on httptools and uvloop without an access log, gunicorn with the shipped settings (64 threads),",
        "one worker each; the floor under the same server and flags.",
        "Requests/s and latencies are medians over rounds; a ratio is the median of each round's ratio.", "",
        *table, "", *[f"- {n}" for n in notes], ""])
    print(report)
    if not args.quick:
        results = BENCH / "RESULTS.md"
        earlier = results.read_text() if results.exists() else ""
        appended = earlier[earlier.index("\n## "):] if "\n## " in earlier else ""  # bench/jwt.py's section
        results.write_text(report + appended)
        write_chart(report + appended)


if __name__ == "__main__":
    main()

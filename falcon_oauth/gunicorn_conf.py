"""gunicorn settings for falcon-oauth, from the installed package:

    gunicorn -c python:falcon_oauth.gunicorn_conf falcon_oauth.wsgi:app                                  # threads
    gunicorn -c python:falcon_oauth.gunicorn_conf -k uvicorn_worker.UvicornWorker falcon_oauth.asgi:app  # ASGI

(``config/gunicorn.conf.py`` in a checkout is the same). Every value can be overridden on the command line
or with GUNICORN_CMD_ARGS.

The plugin's settings are checked here, when gunicorn's master reads this file: a bad or missing setting
ends gunicorn with exit status 2 and the one line ``falcon-oauth`` prints, instead of workers that exit
and are restarted forever."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

from falcon_oauth.__main__ import check_settings

_settings = check_settings(with_logging=True)  # logging first: discovery logs the endpoints it uses

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
# A gthread worker holds a thread per request in flight, so by Little's law it serves at most
# threads / latency requests/s: 64 threads allow 1,280 requests/s per worker against a 50 ms authorization
# server, more than one worker's CPU handles (cache hits hold a thread for well under a millisecond). Size it as
# threads >= expected requests/s per worker x the server's latency in seconds.
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
timeout = 30  # longer than AUTH_SERVER_TIMEOUT plus a memcached lock wait
graceful_timeout = 20  # in-flight requests finish on SIGTERM within this
keepalive = 5
errorlog = "-"
logconfig_dict = json.loads(Path(__file__).with_name("logging.json").read_text())
# No access line by default: the decision line already says what each request got, and a second line per
# request costs as much again. GUNICORN_ACCESS_LOG=true adds gunicorn's, as JSON lines beside the rest. (With
# a logging configuration, gunicorn logs access lines through it whatever --access-logfile says.)
if os.environ.get("GUNICORN_ACCESS_LOG", "").lower() not in ("1", "true", "yes", "on"):
    logconfig_dict["loggers"]["gunicorn.access"] = {"handlers": [], "propagate": False}

# Prometheus: every worker writes its samples to this directory and /metrics sums them. Emptied here, when
# the master reads this file, before any worker (or a --preload'ed app) writes to it: samples of an earlier
# run must not count.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/falcon-oauth-prometheus")
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    from falcon_oauth.startup import report_gunicorn

    report_gunicorn(server)  # the start-up line and warnings, once for all workers

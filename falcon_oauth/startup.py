"""What the service says once at start: one INFO line naming what it serves and with what, and a WARNING for
each open door on an address beyond loopback. ``report`` decides; each way of running the plugin calls it
once, with the addresses it listens on as far as that way can know them:

- ``python -m falcon_oauth``: HOST and PORT (``__main__.serve``);
- gunicorn with ``config/gunicorn.conf.py``: the sockets the master bound (its ``when_ready`` hook), once for
  all workers, either worker class;
- ``uvicorn asgi:app``: the address uvicorn's own command line parsed (``--host``/``--port``, ``UVICORN_HOST``
  ...), read by ``asgi.py``; with ``--workers`` or ``--reload`` each worker process says it;
- any other server (gunicorn without that file, waitress, hypercorn...): the app cannot see the address and
  says nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from falcon_oauth.core import Dialect, display_url
from falcon_oauth.settings import Settings, SettingsError, load_settings

log = logging.getLogger("falcon_oauth.startup")


@dataclass(frozen=True)
class Listener:
    host: str  # an address or a name; for a unix socket, its path
    port: int | None  # None for a unix socket

    def __str__(self) -> str:
        if self.port is None:
            return f"unix:{self.host}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def local(self) -> bool:
        """Reachable from this machine only: a unix socket, a loopback address, or ``localhost``."""
        if self.port is None or self.host == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False  # a name other than localhost (or "", every interface) may resolve to anything
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback


def report(settings: Settings, listeners: Sequence[Listener] | None) -> None:
    """The start-up line, and the warnings for a service reachable beyond loopback (``listeners`` None:
    not known, so maybe reachable) without the plugin's key, or with ``/metrics`` open."""
    where = ", ".join(map(str, listeners)) if listeners else "an address this process cannot see"
    if settings.introspection_endpoint or not settings.oidc_discovery:
        introspection = display_url(settings.introspection_url)
    else:  # gunicorn's master reports before any worker has read the metadata
        introspection = f"from the metadata of {display_url(settings.auth_server_url)}"
    if settings.cache_backend == "memcached":
        cache = f"memcached ({','.join(settings.memcached_servers)})"
    elif settings.cache_backend == "memory":
        cache = f"memory (per process, {settings.cache_max_entries} entries)"
    else:
        cache = "null (no cache)"
    plugin_key = "on" if settings.plugin_api_key else "off"
    metrics_key = "on" if settings.metrics_require_key else "off"
    dialects = " and ".join(Dialect)
    log.info("falcon-oauth %s starting: listen %s, dialects %s, introspection %s, cache %s, plugin key %s, "
             "metrics key %s", settings.version, where, dialects, introspection, cache, plugin_key, metrics_key,
             extra={"listen": [str(listener) for listener in listeners or ()], "dialects": list(Dialect),
                    "introspection": introspection, "cache": cache, "plugin_key": plugin_key,
                    "metrics_key": metrics_key})
    if listeners and all(listener.local for listener in listeners):
        return
    beyond = "beyond loopback" if listeners else "perhaps beyond loopback"
    if not settings.plugin_api_key:
        log.warning("listening on %s, %s, without PLUGIN_API_KEY: anyone who reaches this port can ask "
                    "/plugin/authenticate about any token and read its claims; set PLUGIN_API_KEY (and give "
                    "MockForge the same key)", where, beyond)
    if not settings.metrics_require_key:
        log.warning("/metrics is open to anyone who reaches %s: set METRICS_REQUIRE_KEY=true to put it behind "
                    "the plugin's key", where)


def report_gunicorn(server: Any) -> None:
    """gunicorn's ``when_ready`` hook: runs once in the master, after it bound its sockets and before it
    forks the workers. A bad setting is left to the workers, which stop on it with the one line."""
    try:
        settings = load_settings()
    except SettingsError:
        return
    listeners = []
    for listener in server.LISTENERS:
        name = listener.sock.getsockname()
        if listener.sock.family == socket.AF_UNIX:
            listeners.append(Listener(str(name), None))
        else:
            listeners.append(Listener(name[0], name[1]))
    report(settings, listeners)


def report_uvicorn(settings: Settings) -> None:
    """Called by ``asgi.py``: reports when this process runs uvicorn's command line (``uvicorn asgi:app``),
    with the address that command line asked for; under any other server it does nothing."""
    params = _uvicorn_command_line()
    if params is None:
        return
    if params.get("uds"):
        report(settings, [Listener(params["uds"], None)])
    elif params.get("fd") is not None:  # a socket inherited from whoever started uvicorn
        report(settings, None)
    else:
        report(settings, [Listener(params["host"], params["port"])])


def _uvicorn_command_line() -> dict[str, Any] | None:
    """The parameters uvicorn's command parsed, when it runs this process (or this is one of its ``--workers``,
    whose command line is the parent's), else None."""
    module = sys.modules.get("uvicorn.main")
    command = getattr(module, "main", None)
    if command is None:
        return None
    import click  # uvicorn's command line is a click command

    context = click.get_current_context(silent=True)
    if context is not None and context.command is command:
        return context.params
    import multiprocessing
    from pathlib import Path

    program = Path(sys.argv[0])
    if multiprocessing.parent_process() is None or "uvicorn" not in (program.name, program.parent.name):
        return None  # uvicorn run by a program of its own (uvicorn.run): nothing says where it binds
    context = command.make_context("uvicorn", sys.argv[1:], resilient_parsing=True)
    return context.params

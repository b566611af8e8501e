"""The command line: ``falcon-oauth`` (or ``python -m falcon_oauth``) serves the plugin under uvicorn on
HOST:PORT; ``demo`` runs it against the built-in development authorization server, ``devserver`` that
server alone. ``--help`` on each says more.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping

from falcon_oauth import __version__
from falcon_oauth.logs import configure_logging
from falcon_oauth.settings import Settings, SettingsError, load_settings


def fail(message: str) -> SystemExit:
    """One line on stderr and exit status 2: how every start-up problem ends, without a traceback."""
    print(f"falcon-oauth: {message}", file=sys.stderr, flush=True)
    return SystemExit(2)


def check_settings(environ: Mapping[str, str] | None = None, with_logging: bool = False,
                   **overrides: object) -> Settings:
    """Settings from the environment (discovered endpoints included); a bad setting exits 2 with one line.
    Also run by gunicorn's master (falcon_oauth.gunicorn_conf), so a bad setting never reaches a worker."""
    from falcon_oauth.discovery import discover_at_start

    try:
        settings = load_settings(environ, **overrides)
        if with_logging:
            configure_logging(settings.log_level, settings.secrets)  # before discovery, which logs what it finds
        return discover_at_start(settings)
    except SettingsError as error:
        raise fail(f"configuration error: {error}") from None


def settings_or_exit(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """``check_settings`` with logging configured: what each app process starts with."""
    return check_settings(environ, with_logging=True, **overrides)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line and exit 2 when the port is taken or the host unknown."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as error:
        raise fail(f"cannot listen on {host}:{port}: {error.strerror or error} (set PORT to another port)") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    """uvicorn on ``sock`` (bound beforehand, so that a taken port is one line), else on HOST:PORT."""
    import signal

    import uvicorn

    from falcon_oauth.app import create_app
    from falcon_oauth.startup import Listener, report

    sock = sock or listen(settings.host, settings.port)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under the handler it found
    # at start, so that the process dies by the signal. With a handler of ours there, it returns instead and
    # the service exits 0 after a clean shutdown, which is what orchestrators expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    config = uvicorn.Config(create_app(settings, asgi=True), host=settings.host, port=settings.port,
                            log_config=None, lifespan="on", timeout_graceful_shutdown=10,
                            access_log=False)  # the decision line already says what each request got
    report(settings, [Listener(settings.host, settings.port)])
    uvicorn.Server(config).run(sockets=[sock])


def program_name() -> str:
    """The program as it was invoked: ``python -m falcon_oauth`` or the installed ``falcon-oauth``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m falcon_oauth" if invoked in ("", "__main__.py", "-c") else invoked


def parser() -> argparse.ArgumentParser:
    settings = ("Settings come from the environment (AUTH_SERVER_URL, OAUTH_CLIENT_SECRET, ...) or the YAML file "
                "named by CONFIG_FILE; README.md lists them all. A bad setting exits 2 with one line.")
    top = argparse.ArgumentParser(
        prog=program_name(), description="MockForge's OAuth2 authentication plugin (RFC 7662 token introspection). "
        "Without a command it serves the plugin.", epilog=settings)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", metavar="{serve,demo,devserver}")
    commands.add_parser("serve", help="serve the plugin under uvicorn on HOST:PORT (the default)",
                        description="Serve the plugin under uvicorn on HOST:PORT (default 0.0.0.0:8080).",
                        epilog=settings)
    demo = commands.add_parser(
        "demo", help="the plugin wired to the development authorization server, with curl commands to try",
        description="Start the development authorization server and the plugin on 127.0.0.1:PORT (PORT, default "
        "8080), and print curl commands for both dialects, each labelled with the answer it gets.")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address the demo's plugin listens on (default: 127.0.0.1, this machine only)")
    devserver = commands.add_parser(
        "devserver", help="the DEVELOPMENT authorization server alone",
        description="Serve the DEVELOPMENT authorization server (never for production) on DEVSERVER_HOST:"
        "DEVSERVER_PORT (default 127.0.0.1:9400).")
    devserver.add_argument("config", nargs="?", metavar="CONFIG.yaml",
                           help="its clients, users and tokens (see config/devserver.example.yaml); "
                           "built-in ones when omitted")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from falcon_oauth.demo import run_demo

        run_demo(args.host)
    elif args.command == "devserver":
        from falcon_oauth.devserver import run_devserver

        run_devserver(args.config)
    else:
        serve(settings_or_exit())


if __name__ == "__main__":
    main()

"""``python -m falcon_oauth``: serve the plugin under uvicorn on HOST:PORT.

``python -m falcon_oauth demo`` runs the plugin against the built-in development authorization server,
and ``python -m falcon_oauth devserver`` that server alone.
"""

from __future__ import annotations

import sys

from falcon_oauth.logs import configure_logging
from falcon_oauth.settings import Settings, SettingsError, load_settings


def settings_or_exit(**overrides: object) -> Settings:
    """Settings from the environment, logging configured; a bad setting exits 2 with one line."""
    from falcon_oauth.discovery import discover_at_start

    try:
        settings = load_settings(**overrides)
        configure_logging(settings.log_level, settings.secrets)  # before discovery, which logs what it finds
        return discover_at_start(settings)
    except SettingsError as error:
        print(f"falcon-oauth: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(settings: Settings) -> None:
    import signal

    import uvicorn

    from falcon_oauth.app import create_app
    from falcon_oauth.startup import Listener, report

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under the handler it found
    # at start, so that the process dies by the signal. With a handler of ours there, it returns instead and
    # the service exits 0 after a clean shutdown, which is what orchestrators expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    report(settings, [Listener(settings.host, settings.port)])
    uvicorn.run(create_app(settings, asgi=True), host=settings.host, port=settings.port,
                log_config=None, lifespan="on", timeout_graceful_shutdown=10)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    if command == "serve":
        serve(settings_or_exit())
    elif command == "demo":
        from falcon_oauth.demo import run_demo

        run_demo()
    elif command == "devserver":
        from falcon_oauth.devserver import run_devserver

        run_devserver(args[1:])
    else:
        print("usage: python -m falcon_oauth [serve | demo | devserver [CONFIG.yaml]]", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

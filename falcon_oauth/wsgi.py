"""The WSGI app, settings from the environment: ``gunicorn falcon_oauth.wsgi:app``."""
from falcon_oauth.__main__ import settings_or_exit
from falcon_oauth.app import create_app

app = create_app(settings_or_exit(), asgi=False)

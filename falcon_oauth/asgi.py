"""The ASGI app, settings from the environment: ``uvicorn falcon_oauth.asgi:app``."""
from falcon_oauth.__main__ import settings_or_exit
from falcon_oauth.app import create_app

app = create_app(settings_or_exit(), asgi=True)

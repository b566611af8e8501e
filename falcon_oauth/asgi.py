"""The ASGI app, settings from the environment: ``uvicorn falcon_oauth.asgi:app``."""
from falcon_oauth.__main__ import settings_or_exit
from falcon_oauth.app import create_app
from falcon_oauth.startup import report_uvicorn

settings = settings_or_exit()
app = create_app(settings, asgi=True)
report_uvicorn(settings)  # the start-up line and warnings, when uvicorn's own command line runs this

"""WSGI entry point in a checkout: ``gunicorn wsgi:app`` (installed: ``falcon_oauth.wsgi:app``)."""
from falcon_oauth.wsgi import app

__all__ = ["app"]

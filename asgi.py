"""ASGI entry point in a checkout: ``uvicorn asgi:app`` (installed: ``falcon_oauth.asgi:app``)."""
from falcon_oauth.asgi import app

__all__ = ["app"]

"""gunicorn settings for falcon-oauth from a checkout: ``gunicorn -c config/gunicorn.conf.py wsgi:app``
(threads), or add ``-k uvicorn_worker.UvicornWorker asgi:app`` for ASGI workers. They live in the package,
``falcon_oauth/gunicorn_conf.py`` (``-c python:falcon_oauth.gunicorn_conf`` where it is installed); that
file checks the plugin's settings in gunicorn's master, so a bad one exits 2 with one line."""

from falcon_oauth.gunicorn_conf import *  # noqa: F403

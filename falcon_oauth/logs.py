"""JSON logs on stdout (python-json-logger), with a redaction filter as a safety net: code never logs a
token or secret, and anything that looks like one is masked anyway. Imports nothing heavy, so logging
configs (config/logging.json) can name its filter before the app is loaded."""

from __future__ import annotations

import itertools
import logging
import re
import sys
import uuid
from collections.abc import Iterable

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_SEQUENCE = itertools.count(1)


def request_id(*candidates: str | None) -> str:
    """The first well-formed candidate (the host's ``context.request_id``, an ``X-Request-ID``), else a new
    one, unique across processes (a random per-process prefix and a counter): a request id goes into every
    log line, so nothing else may pass."""
    for candidate in candidates:
        if candidate and _REQUEST_ID.fullmatch(candidate):
            return candidate
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE):016x}"


_BEARER = re.compile(r"(?i)(bearer\s+|basic\s+|access_token=|token=|x-api-key:\s*)[^\s\"'&,;]+")
MASK = "[redacted]"
_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Redact(logging.Filter):
    """Masks bearer/basic credentials, token parameters and the configured secrets in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _clean(self, text: str) -> str:
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        decision = record.__dict__.get("decision")
        if decision is not None:  # a decision line: its fields are all in this mapping, its message is fixed
            for key, value in decision.items():
                if isinstance(value, str):
                    decision[key] = self._clean(value)
            return True
        record.msg = self._clean(record.getMessage() if record.args else str(record.msg))
        record.args = None
        extras = vars(record)
        for key, value in extras.items():  # only the extras: the standard fields carry no request data
            if isinstance(value, str) and key not in _STANDARD_FIELDS:
                extras[key] = self._clean(value)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter with this project's fields, and a short path for the decision line
    logged on every request: its fields come as one ``decision`` mapping, so nothing else of the record is
    looked at (the generic path walks every attribute of every record and costs twice as much)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger",
                                            "process": "pid"})
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        decision = record.__dict__.get("decision")
        if decision is None:
            return super().format(record)
        return orjson.dumps({"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                             "pid": record.process, "message": record.getMessage(), **decision}).decode()


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """One JSON object per line on stdout for this package, uvicorn and gunicorn."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redact(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO; our own decision line already says what happened
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

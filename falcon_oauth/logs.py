"""JSON logs on stdout (python-json-logger), with a redaction filter as a safety net: code never logs a
token or secret, and anything that looks like one is masked anyway. Imports nothing heavy, so logging
configs (config/logging.json) can name its filter before the app is loaded."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_SEQUENCE = itertools.count(1)
_PID = os.getpid()  # this process's id, kept here: os.getpid() is a system call per line


def _forked() -> None:
    """In a forked child (gunicorn's workers, when this module was loaded by the master's logging config):
    its own id, and request ids of its own."""
    global _PID, _PROCESS_PREFIX, _SEQUENCE
    _PID = os.getpid()
    _PROCESS_PREFIX = uuid.uuid4().hex[:16]
    _SEQUENCE = itertools.count(1)


os.register_at_fork(after_in_child=_forked)


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


# The fields of a decision line that may carry text from outside (the rest are fixed vocabularies and numbers)
DECISION_FREE_TEXT = ("request_id", "user_id", "detail")


class Redact(logging.Filter):
    """Masks bearer/basic credentials, token parameters and the configured secrets in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _clean(self, text: str) -> str:
        # _BEARER needs whitespace, "=" or ":"; a printable text with no space has no other whitespace
        if not text.isprintable() or " " in text or "=" in text or ":" in text:
            text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        decision = record.__dict__.get("decision")
        if decision is not None:  # a decision line: its message is fixed, and so are the other fields' words
            for key in DECISION_FREE_TEXT:
                text = decision.get(key)
                if text:
                    decision[key] = self._clean(text)
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


_TEMPLATE = logging.LogRecord("falcon_oauth", logging.INFO, __file__, 0, "authentication", None, None,
                              func="decision")
_START_NS = round((_TEMPLATE.created - _TEMPLATE.relativeCreated / 1000) * 1e9)  # when logging was loaded


class DecisionRecord(logging.LogRecord):
    """The record of the line logged for every decision. ``LogRecord.__init__`` works out on every call what
    never changes for this line (logger, level, source file and module, process name); here those are
    copied from one record made at import, and each record sets only its time, thread, process and fields.
    Every LogRecord attribute is there, so any handler or formatter takes it."""

    # every key, the per-record ones too: setting those then never grows the copied dict
    _fixed = {**vars(_TEMPLATE), "decision": None}

    def __init__(self, outcome: str, decision: dict[str, object]) -> None:
        self.__dict__ = self._fixed.copy()  # instead of LogRecord.__init__, which is the cost
        now = time.time_ns()
        self.created = now / 1e9
        self.msecs = (now % 1_000_000_000) // 1_000_000 + 0.0
        self.relativeCreated = (now - _START_NS) / 1e6
        self.thread = threading.get_ident()
        self.threadName = threading.current_thread().name
        self.process = _PID
        self.msg = f"authentication {outcome}"  # the message, made here: no args to merge in getMessage
        self.decision = decision


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter with this project's fields, and a short path for the decision line
    logged on every request: its fields come as one ``decision`` mapping, so nothing else of the record is
    looked at (the generic path walks every attribute of every record and costs twice as much)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger",
                                            "process": "pid"})
        # uvicorn gives its records a ``color_message``, the message again with ANSI colour escapes
        kwargs.setdefault("reserved_attrs", (*RESERVED_ATTRS, "color_message"))
        super().__init__(*args, **kwargs)

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text
    _millisecond: tuple[int, str] = (-1, "")  # the same for the last millisecond

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """``logging.Formatter.formatTime``, with the text of the current second and millisecond made once
        (several lines a millisecond under load). Each cache is one tuple, swapped whole: threads always
        see a matching pair."""
        if datefmt or self.datefmt:
            return super().formatTime(record, datefmt)
        millisecond = self._millisecond
        if millisecond[0] == (key := int(record.created) * 1000 + int(record.msecs)):
            return millisecond[1]
        second = self._second
        if second[0] != int(record.created):
            second = (int(record.created), time.strftime(self.default_time_format, self.converter(record.created)))
            self._second = second
        millisecond = (key, self.default_msec_format % (second[1], record.msecs))
        self._millisecond = millisecond
        return millisecond[1]

    def format(self, record: logging.LogRecord) -> str:
        decision = record.__dict__.get("decision")
        if decision is None:
            return super().format(record)
        return orjson.dumps({"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                             "pid": record.process, "message": record.getMessage(), **decision}).decode()


class LineWriter(logging.Handler):
    """A stream handler whose writing is done by a thread of its own. The caller formats (and the filters
    redact) as usual, then only queues the line; the writer takes whatever lines have queued up and writes
    them with as few writes as it can, each at most ``PIPE_BUF`` bytes and whole lines, so that the lines
    of several processes sharing one pipe never interleave.

    Why: under gunicorn's threads a synchronous write per line costs far more than the line itself, since
    every thread that logs queues on the handler's lock and hands the GIL around during the write. And a
    stdout that nobody reads no longer stalls requests: past ``max_pending`` queued lines, lines are dropped
    and counted, and a warning says how many once writing resumes.

    The writer starts on first use in each process (gunicorn configures logging before it forks); at exit
    ``logging.shutdown`` flushes what is queued.
    """

    CHUNK = 4096  # PIPE_BUF on Linux: a write this size to a pipe is never split or interleaved
    INTERVAL = 0.05  # the writer rests this long after each write: woken for every line, it costs requests more

    def __init__(self, stream: object = None, max_pending: int = 10_000) -> None:
        super().__init__()
        self.stream = sys.stdout if stream is None else stream
        self.max_pending = max_pending
        self.dropped = 0
        self._start = threading.Lock()
        self._pid: int | None = None
        self._lines: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle`` without the handler's lock: formatting is thread-safe and so is the queue."""
        passed = self.filter(record)
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._pid != _PID:
            self._start_writer()
        if self._lines.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._lines.put(line)

    def _start_writer(self) -> None:
        with self._start:
            if self._pid == _PID:
                return
            self._lines = queue.SimpleQueue()  # a parent's pending lines are the parent's to write
            self._pid = _PID
            threading.Thread(target=self._write_forever, args=(self._lines,), name="falcon-oauth-log-writer",
                             daemon=True).start()

    def _write_forever(self, lines: queue.SimpleQueue[str | threading.Event | None]) -> None:
        while True:
            batch = [lines.get()]
            while True:
                try:
                    batch.append(lines.get_nowait())
                except queue.Empty:
                    break
            text = [item for item in batch if isinstance(item, str)]
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                text.append(self.format(logging.LogRecord(
                    "falcon_oauth.logs", logging.WARNING, __file__, 0,
                    "%d log lines dropped: stdout was not read fast enough", (dropped,), None)))
            self._write(text)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is None:
                    return
            time.sleep(self.INTERVAL)  # lines gather meanwhile: one wake-up per batch, not one per line

    def _write(self, lines: list[str]) -> None:
        chunk: list[str] = []
        size = 0
        for line in lines:
            length = (len(line) if line.isascii() else len(line.encode())) + 1
            if chunk and size + length > self.CHUNK:
                self._write_chunk(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            self._write_chunk(chunk)

    def _write_chunk(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:  # a closed or broken stdout must not kill the writer
            pass

    def flush(self) -> None:
        """Returns once every line queued so far is written (or after 5 s)."""
        if self._pid != _PID:
            return
        written = threading.Event()
        self._lines.put(written)
        written.wait(5)

    def close(self) -> None:
        self.flush()
        if self._pid == _PID:
            self._lines.put(None)
            self._pid = None
        super().close()


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """One JSON object per line on stdout for this package, uvicorn and gunicorn."""
    handler = LineWriter()
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
        if name.endswith(".access") and not logger.propagate and not logger.handlers:
            continue  # the server turned its access log off (uvicorn --no-access-log, the gunicorn settings)
        logger.handlers.clear()
        logger.propagate = True

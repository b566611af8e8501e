"""The log writer: lines arrive whole and in order from any number of threads and processes, and a stdout
that nobody reads never holds up a request (lines beyond the backlog are dropped and the drop is reported)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from falcon_oauth.logs import DecisionRecord, JsonFormatter, LineWriter, request_id
from tests.conftest import ROOT, contract, free_port, stop, wait_for_port


def writer_logger(name: str, stream: object, **options: object) -> tuple[logging.Logger, LineWriter]:
    handler = LineWriter(stream, **options)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"falcon_oauth.test.{name}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_lines_from_many_threads_arrive_whole_and_in_order(tmp_path):
    path = tmp_path / "out.log"
    with path.open("w") as stream:
        logger, handler = writer_logger("threads", stream)

        def work(n: int) -> None:
            for i in range(500):
                logger.info("line", extra={"thread_no": n, "seq": i, "pad": "é" * (i % 50)})

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handler.flush()  # returns once all of it is written
        records = [json.loads(line) for line in path.read_text().splitlines()]
        handler.close()
    assert len(records) == 8 * 500
    for n in range(8):
        assert [r["seq"] for r in records if r["thread_no"] == n] == list(range(500))


def test_a_stdout_nobody_reads_never_blocks_the_logging_thread_and_drops_are_reported():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    logger, handler = writer_logger("unread", stream, max_pending=100)
    done = threading.Event()

    def log_a_lot() -> None:
        for i in range(5000):  # ~700 KB of lines against a 64 KB pipe
            logger.info("line %d %s", i, "x" * 100)
        done.set()

    threading.Thread(target=log_a_lot, daemon=True).start()
    assert done.wait(20), "logging blocked on a full pipe"
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    handler.close()
    stream.close()
    reader.join(10)
    lines = b"".join(chunks).decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    warnings = [r for r in records if "log lines dropped" in r["message"]]
    assert warnings and all(r["level"] == "WARNING" for r in warnings)
    written = [r for r in records if r["message"].startswith("line ")]
    assert len(written) + sum(int(r["message"].split()[0]) for r in warnings) == 5000  # each line: written or counted
    assert len(written) < 5000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_writes_its_own_lines_and_never_the_parents_again(tmp_path):
    path = tmp_path / "out.log"
    with path.open("a") as stream:
        logger, handler = writer_logger("fork", stream)
        logger.info("first")
        time.sleep(0.01)  # the writer has written "first" and rests: the next line waits in the queue
        logger.info("pending-at-fork")
        pid = os.fork()
        if pid == 0:
            logger.info("child")
            handler.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        handler.close()
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert sorted(messages) == ["child", "first", "pending-at-fork"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_forked_workers_make_request_ids_of_their_own_and_log_their_own_pid():
    """gunicorn's master loads this module (its logging config names it) before forking the workers: each
    worker must still generate ids no other worker generates, and sign its lines with its own pid."""
    parent_ids = [request_id(None) for _ in range(3)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        record = DecisionRecord("authenticated", {})
        os.write(write, json.dumps([request_id(None) for _ in range(3)] + [record.process]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    *child_ids, child_pid = json.loads(os.read(read, 65536))
    os.close(read)
    os.close(write)
    assert child_pid == pid != os.getpid()
    assert not set(child_ids) & set(parent_ids + [request_id(None) for _ in range(3)])
    assert len(set(child_ids)) == 3


SERVERS = {  # as the README runs them, with their logging configs
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", "{port}",
                "--log-config", "config/logging.json"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app",
                 "-b", "127.0.0.1:{port}", "--workers", "1"],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_server_whose_stdout_nobody_reads_keeps_answering(authserver, server, tmp_path):
    port = free_port()
    env = {**os.environ, **authserver.environ(LOG_LEVEL="INFO", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))}
    process = subprocess.Popen([part.format(port=port) for part in SERVERS[server]], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # never read
    try:
        wait_for_port(port, process)
        token = authserver.token()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(2000):  # a decision line each, several times what the pipe holds
                answer = client.post("/plugin/authenticate", json=contract("sdk_request_valid.json", token))
                assert answer.json()["result"]["authenticated"] is True
    finally:
        stop(process)
        process.stdout.close()



FRAGMENTS = st.sampled_from(["bearer", "Basic", "token=", "access_token=", "X-Api-Key:", " ", "\t", "\n",
                             "\u00a0", "\u2028", "\x85", "\x1c", "abc", "s3cr3t", "=", ":", "-", "é"])


@given(st.lists(FRAGMENTS | st.text(max_size=5), max_size=12).map("".join))
@example("X-Api-Key:abc")
@example("bearer\u00a0abc")
@example("Basic\x85abc")
@settings(max_examples=500)
def test_redaction_masks_exactly_what_the_full_pattern_masks(text):
    """The filter skips the pattern for text that cannot match it; what it masks must not change."""
    from falcon_oauth.logs import _BEARER, MASK, Redact

    expected = _BEARER.sub(lambda m: m.group(1) + MASK, text).replace("s3cr3t", MASK)
    assert Redact(["s3cr3t"])._clean(text) == expected


def test_the_decision_record_works_with_any_formatter():
    """Operators' own formats (config/logging.json) name any LogRecord attribute: each must be there."""
    from falcon_oauth.logs import DecisionRecord

    fields = ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno", "funcName", "created",
              "msecs", "relativeCreated", "thread", "threadName", "process", "processName", "message")
    formatter = logging.Formatter(" ".join(f"%({field})s" for field in fields) + " %(asctime)s")
    reference = logging.LogRecord("falcon_oauth", logging.INFO, "x.py", 1, "authentication %s", ("rejected",),
                                  None)
    record = DecisionRecord("rejected", {"outcome": "rejected"})
    line = formatter.format(record).split()
    assert line[:3] == ["falcon_oauth", "20", "INFO"]
    assert line[15:17] == ["authentication", "rejected"]
    assert int(line[13]) == os.getpid() and line[12] == threading.current_thread().name
    assert abs(record.created - time.time()) < 5
    assert abs(record.relativeCreated - reference.relativeCreated) < 5000
    assert set(vars(reference)) - set(vars(record)) <= {"taskName"}

"""Purges of the memory cache that reach every worker process of one instance (gunicorn or
``uvicorn --workers``), not only the one that received the purge.

The processes of an instance share a small file, mapped into each of them (``mmap``): a purge of every
entry writes a new random generation into it, a purge of one token appends the token's cache key to a ring
of recent purges. Before each lookup a process compares the file's 16-byte header with the one it last
acted on (a memory read, no system call) and, when it changed, drops what was purged since. So a purge
reaches every worker before its answer is sent.

The file is ``$TMPDIR/falcon-oauth-<uid>/purges-<parent pid>-<configuration id>``: the workers of one
gunicorn or uvicorn master share a parent, and ``--preload``ed workers inherit the mapping itself. Two
instances of one configuration started by the same parent share it too, which purges more, never less.
Files of parents that are gone are removed when the next file is made. When no file can be made (no
writable private temporary directory), the mapping is private to this process and the processes it forks,
and a WARNING says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("falcon_oauth.cache")

HEADER = 16  # generation (8 random bytes, new for each purge of everything) | sequence of token purges
SLOT = 96  # one cache key, NUL-padded
RING = 64  # token purges kept; a process more than half a ring behind drops everything instead
SIZE = HEADER + RING * SLOT


class SharedPurges:
    def __init__(self, name: str, drop_all: Callable[[], None], drop: Callable[[str], None]) -> None:
        self._drop_all = drop_all
        self._drop = drop
        self._lock = threading.Lock()
        try:
            self.path: str | None = _shared_file(name)
            fd = os.open(self.path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("purges of the memory cache reach only the process that receives them (and processes "
                        "it forks): no shared file in %s (%s)", tempfile.gettempdir(), type(exc).__name__)
            self.path, self._map = None, mmap.mmap(-1, SIZE)
        self._seen = self._map[:HEADER]

    def post_all(self) -> None:
        """Every process drops every entry at its next lookup."""
        self._map[:8] = os.urandom(8)  # random, not a count: two purges at once still change it

    def post(self, key: str) -> None:
        """Every process drops ``key`` at its next lookup."""
        data = key.encode()
        if len(data) > SLOT:
            raise ValueError("cache key longer than a slot")
        with self._exclusive():
            sequence = int.from_bytes(self._map[8:HEADER], "little") + 1
            start = HEADER + sequence % RING * SLOT
            self._map[start:start + SLOT] = data.ljust(SLOT, b"\0")
            self._map[8:HEADER] = sequence.to_bytes(8, "little")  # after the slot: a reader sees both

    def catch_up(self) -> None:
        """Drops what was purged since the last call, by any process. Cheap when nothing was."""
        if self._map[:HEADER] == self._seen:
            return
        with self._lock:  # the header is marked seen only once its purges are applied
            header = self._map[:HEADER]
            if header == self._seen:
                return
            last = int.from_bytes(self._seen[8:], "little")
            sequence = int.from_bytes(header[8:], "little")
            if header[:8] != self._seen[:8] or not 0 <= sequence - last < RING // 2:
                self._drop_all()
            else:
                for n in range(last + 1, sequence + 1):
                    start = HEADER + n % RING * SLOT
                    self._drop(self._map[start:start + SLOT].rstrip(b"\0").decode(errors="replace"))
            self._seen = header

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """A lock across processes, for writers. The file is opened anew for it: processes that inherit one
        open file (a fork) would share its lock instead of excluding each other."""
        if self.path is None:
            with self._lock:
                yield
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _shared_file(name: str) -> str:
    """The file, made if missing, in a directory only this user can use (checked: never one that another
    user made for us)."""
    directory = os.path.join(tempfile.gettempdir(), f"falcon-oauth-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} is not a private directory of this user")
    _sweep(directory)
    path = os.path.join(directory, f"purges-{os.getppid()}-{name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_size < SIZE:
            os.ftruncate(fd, SIZE)  # zeros; a process racing to do the same leaves the same zeros
    finally:
        os.close(fd)
    return path


def _sweep(directory: str) -> None:
    """Removes the files of parents that are gone: no process will look for them again (those that mapped
    one keep their mapping)."""
    for entry in os.scandir(directory):
        parts = entry.name.split("-")
        if len(parts) != 3 or parts[0] != "purges" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        except OSError:  # alive, as another user's process
            pass

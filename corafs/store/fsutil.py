"""Filesystem helpers the local store and the rest of the core share: durable writes (fsync
of a file and of its directory, atomic replace) and writer tokens.

Every temporary file carries the *token* of the process that writes it
(``<name>.w<token>.<kind>.tmp``), and that process holds an exclusive lock on
``objects/writer-<token>.lock`` for as long as it lives: a temporary is removed only when its
writer's lock is free (the writer died), never while a concurrent writer still writes it."""
from __future__ import annotations

import fcntl
import os
import re
import threading
import uuid
from typing import Optional


def fsync_path(path: str) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TOKEN_RE = re.compile(r"\.w([0-9a-f]{12})\.")


class WriterToken:
    """This process's writer identity: a random token and an exclusive lock held until the
    process ends (the kernel drops it then, however the process ends)."""

    _mine: dict[str, "WriterToken"] = {}
    _guard = threading.Lock()

    def __init__(self, objdir: str):
        self.token = uuid.uuid4().hex[:12]
        self.path = os.path.join(objdir, f"writer-{self.token}.lock")
        self.pid = os.getpid()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    @classmethod
    def of(cls, objdir: str) -> "WriterToken":
        key = os.path.realpath(objdir)
        with cls._guard:
            t = cls._mine.get(key)
            if t is None or t.pid != os.getpid():
                t = cls._mine[key] = cls(objdir)
            return t

    def tmp(self, path: str, suffix: str = "tmp") -> str:
        """A temporary name beside ``path`` that says who writes it."""
        return f"{path}.w{self.token}.{uuid.uuid4().hex[:6]}.{suffix}"


def writer_alive(objdir: str, token: str) -> bool:
    path = os.path.join(objdir, f"writer-{token}.lock")
    for mine in WriterToken._mine.values():
        if mine.token == token and mine.pid == os.getpid():
            return True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def temporaries(*dirs: str) -> list[tuple[str, int, Optional[str]]]:
    """Temporary files of interrupted or running writes: (path, size, writer token)."""
    out = []
    for d in dirs:
        for dirpath, _dn, files in os.walk(d):
            for fn in files:
                if not (fn.endswith(".tmp") or ".tmp-" in fn):
                    continue
                p = os.path.join(dirpath, fn)
                m = _TOKEN_RE.search(fn)
                try:
                    size = os.path.getsize(p)
                except OSError:
                    continue
                out.append((p, size, m.group(1) if m else None))
    return out


def atomic_write(path: str, data: bytes, token: Optional["WriterToken"] = None) -> None:
    tmp = token.tmp(path) if token else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


fsync_dir = fsync_path


def unlink_quiet(path: Optional[str]) -> None:
    """Remove a file that may already be gone (or was never made: ``None``)."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

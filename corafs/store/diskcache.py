"""This machine's disk cache of objects fetched from a remote store."""
from __future__ import annotations

import os
import threading
import uuid
from typing import Optional

from ..errors import CorafsError


class DiskCache:
    """Fetched objects on this machine's disk, by id (immutable, so sharing the directory
    between a mount and CLI commands is safe: files appear by atomic rename and are only ever
    removed whole). Bounded by ``CORAFS_CACHE_SIZE`` bytes (default 10 GiB) and by a free-space
    floor (``CORAFS_CACHE_FREE``, default 1 GiB); the least recently used go first, data blocks
    before small metadata objects."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.max_bytes = _size_env("CORAFS_CACHE_SIZE", 10 << 30)
        self.min_free = _size_env("CORAFS_CACHE_FREE", 1 << 30)
        self._lock = threading.Lock()
        self._bytes: Optional[int] = None      # measured lazily

    def _path(self, oid: str) -> str:
        return os.path.join(self.root, oid[:2], oid)

    def get(self, oid: str, ln: int) -> Optional[bytes]:
        p = self._path(oid)
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) != ln:
            return None
        try:
            os.utime(p)                         # recency for eviction
        except OSError:
            pass
        return data

    def read(self, oid: str, offset: int, length: int, ln: int) -> Optional[bytes]:
        try:
            fd = os.open(self._path(oid), os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != ln:
                return None
            return os.pread(fd, max(0, min(length, ln - offset)), offset)
        finally:
            os.close(fd)

    def put(self, oid: str, data: bytes) -> None:
        if self.max_bytes <= 0:
            return
        p = self._path(oid)
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = f"{p}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except OSError:
            return                              # a cache: a full disk costs speed only
        with self._lock:
            if self._bytes is None:
                self._bytes = self._measure()
            else:
                self._bytes += len(data)
            if self._bytes > self.max_bytes or self._free() < self.min_free:
                self._evict()

    def _free(self) -> int:
        try:
            st = os.statvfs(self.root)
            return st.f_bavail * st.f_frsize
        except OSError:
            return 1 << 62

    def _measure(self) -> int:
        n = 0
        for d, _dirs, files in os.walk(self.root):
            for f in files:
                try:
                    n += os.path.getsize(os.path.join(d, f))
                except OSError:
                    pass
        return n

    def _evict(self) -> None:
        files = []
        for d, _dirs, names in os.walk(self.root):
            for f in names:
                p = os.path.join(d, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                files.append((st.st_size < (64 << 10), st.st_mtime, st.st_size, p))
        files.sort()                            # data first, oldest first
        total = sum(f[2] for f in files)
        target = int(self.max_bytes * 0.9)
        for _small, _t, size, p in files:
            if total <= target and self._free() >= self.min_free:
                break
            try:
                os.unlink(p)
                total -= size
            except OSError:
                pass
        self._bytes = total


def _size_env(name: str, default: int) -> int:
    v = os.environ.get(name)
    if not v:
        return default
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    v = v.strip().upper().rstrip("B").rstrip("I")
    try:
        if v and v[-1] in units:
            return int(float(v[:-1]) * units[v[-1]])
        return int(v)
    except ValueError:
        raise CorafsError(f"{name}: not a size: {os.environ.get(name)!r}") from None

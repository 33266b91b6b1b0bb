"""A local repository's refs, reflog and config as files (the ref half of ``LocalStore``).

Layout under ``<repo>/``::

    refs/heads/<branch>, refs/tags/<tag>   one id each, replaced atomically
    refs.lock                  fcntl lock serializing ref (and config) compare-and-swap
    reflog/<ref>               one JSON line per move, appended
    corafs.json                the repository's config
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Callable, Optional

from ..errors import CorruptObject, InvalidName, RefConflict
from .base import CONFIG
from .fsutil import atomic_write, fsync_dir


class FileRefs:
    """Needs ``root``, ``refdir`` and ``token()`` of the store it is part of."""

    # -- refs ----------------------------------------------------------------------------------
    def _ref_path(self, name: str) -> str:
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise InvalidName(name, "not a ref name")
        return os.path.join(self.refdir, *parts)

    def get_ref(self, name: str) -> Optional[str]:
        try:
            with open(self._ref_path(name), "r") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def _refs_locked(self):
        """The fcntl lock that serializes ref (and config) changes between processes."""
        @contextlib.contextmanager
        def held():
            with open(os.path.join(self.root, "refs.lock"), "a+") as lk:
                fcntl.flock(lk.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lk.fileno(), fcntl.LOCK_UN)
        return held()

    # -- config: REPO/corafs.json ---------------------------------------------------------------
    def get_config(self) -> Optional[bytes]:
        try:
            with open(os.path.join(self.root, CONFIG), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def create_config(self, data: bytes) -> bool:
        with self._refs_locked():
            if os.path.exists(os.path.join(self.root, CONFIG)):
                return False
            atomic_write(os.path.join(self.root, CONFIG), data)
            return True

    def update_config(self, change: Callable[[dict], dict]) -> dict:
        with self._refs_locked():
            raw = self.get_config()
            if raw is None:
                raise CorruptObject(f"{os.path.join(self.root, CONFIG)} is missing")
            cfg = change(json.loads(raw))
            atomic_write(os.path.join(self.root, CONFIG), json.dumps(cfg, indent=2).encode())
            return cfg

    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        path = self._ref_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with self._refs_locked():
            current = self.get_ref(name)
            if current != expected:
                raise RefConflict(name, expected, current)
            if new is None:
                if os.path.exists(path):
                    os.unlink(path)
                    fsync_dir(os.path.dirname(path))
            else:
                atomic_write(path, (new + "\n").encode(), self.token())

    # -- reflog: REPO/reflog/<ref>, one JSON line per move, appended ----------------------------
    def append_reflog(self, ref: str, line: str) -> None:
        path = os.path.join(self.root, "reflog", *self._ref_path(ref)[len(self.refdir) + 1:]
                            .split(os.sep))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_reflog(self, ref: str) -> list[str]:
        path = os.path.join(self.root, "reflog", *self._ref_path(ref)[len(self.refdir) + 1:]
                            .split(os.sep))
        try:
            with open(path) as f:
                return [ln for ln in f.read().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    def reflog_refs(self) -> list[str]:
        base = os.path.join(self.root, "reflog")
        out = []
        for dirpath, _d, files in os.walk(base):
            for fn in files:
                out.append(os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/"))
        return sorted(out)

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        out = {}
        base = self.refdir
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                if ".tmp" in fn:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
                if rel.startswith(prefix):
                    val = self.get_ref(rel)
                    if val:
                        out[rel] = val
        return out

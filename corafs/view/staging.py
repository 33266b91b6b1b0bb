"""Writing into branch directories (docs/mount.md): the live trees of the branches, the spool
files that hold written data and the journal; ingest and commits (``corafs.view.commits``) and
crash recovery (``corafs.view.recovery``) are the other two parts of ``Staging``. Pure model, no
pyfuse3: every operation takes and returns live nodes (``corafs.view.live``) and raises
``OSError`` with the errno a local disk would give.

A written file is spooled to ``REPO/staging/spool/`` (never held in memory). When its last
writer closes, a worker fsyncs the spool (then the journal may call it committable) and ingests
it. A branch is committed once nothing on it is open or waiting for ingest and nothing has
changed for ``commit_delay`` seconds, or at once on fsync/sync/unmount. A file that cannot be
ingested is kept staged with its reason (``corafs status`` shows it) and never holds back the
rest of the branch or any other branch.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from typing import Optional

from ..errors import NotFound
from ..store.fsutil import unlink_quiet as _unlink
from . import live
from .commits import CommitsMixin
from .recovery import RecoveryMixin, orphan_spools, status_lines
from ..core.journal import Journal
from .live import (CLOSED, DURABLE, EMPTY_TREE, FAILED, INGESTED, OPEN, Forest, LiveNode,
                   Staged, check_name)

log = logging.getLogger("corafs.staging")


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class Staging(CommitsMixin, RecoveryMixin):
    def __init__(self, repo, root: Optional[str], commit_delay: float = 1.0,
                 author: Optional[str] = None):
        self.repo = repo
        #: branch -> metadata for its next commit (set_meta, through setxattr)
        self.pending_meta: dict[str, dict] = {}
        self.root = root
        self.commit_delay = commit_delay
        self.author = author
        self.lock = threading.RLock()
        self.writable = root is not None
        self.journal: Optional[Journal] = None
        self.spool_dir = None
        self._notes: list[str] = []                  # for recover()'s report
        if root is not None:
            self.spool_dir = os.path.join(root, "spool")
            os.makedirs(self.spool_dir, exist_ok=True)
            self.journal = self._open_journal(os.path.join(root, "journal.db"))
        self.changed: dict[str, float] = {}          # branch -> time of its last change
        self.dirty: set[str] = set()                 # branches with uncommitted changes
        self.staged: set[LiveNode] = set()           # nodes holding a Staged
        self._gen = 0
        self._commit_locks: dict[str, threading.Lock] = {}
        self.forest = Forest(repo, self._alloc_unbound, self._detached, self._committed)
        self._on_detach = lambda n: None
        self.recovered: set[str] = set()             # branches whose next commit recovers
        #: set at unmount: ingests in progress stop (the files stay staged in the journal)
        self.stop = threading.Event()
        #: largest file size accepted (EFBIG beyond): storing a file hashes all of it
        self.max_file_size = repo.tuning.max_file_size

    def _open_journal(self, path: str) -> Journal:
        """Open the journal; one that cannot be opened is kept aside, never a reason not to
        mount."""
        try:
            j = Journal(path)
            j.load()
            return j
        except Exception as e:
            self._notes.append(self._set_aside_journal(path, e))
            return Journal(path)

    def _set_aside_journal(self, path: str, why: BaseException) -> str:
        """Move an unreadable journal to lost+found with its ``-wal`` and ``-shm`` (left
        beside a fresh journal, SQLite could replay them into it); the report line."""
        lost = os.path.join(self.root, "lost+found")
        os.makedirs(lost, exist_ok=True)
        dest = os.path.join(lost, f"journal-{time.strftime('%Y%m%dT%H%M%S')}-"
                                  f"{uuid.uuid4().hex[:6]}.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                shutil.move(path + suffix, dest + suffix)
        return f"the staging journal could not be read ({why}); kept as {dest}"

    def bind(self, alloc, on_detach) -> None:
        """The inode table of the view that shows these trees."""
        self.forest.alloc = alloc
        self._on_detach = on_detach

    @staticmethod
    def _alloc_unbound() -> int:
        raise RuntimeError("Staging is not bound to a view")

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    # -- bookkeeping ------------------------------------------------------------------------------
    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _detached(self, n: LiveNode) -> None:
        s = n.staged
        if s is not None:
            self.staged.discard(n)
            if s.writers == 0:
                _unlink(s.spool)
        self._on_detach(n)

    def _committed(self, n: LiveNode, s: Staged) -> None:
        self.staged.discard(n)
        _unlink(s.spool)

    def _set_staged(self, n: LiveNode, s: Optional[Staged]) -> None:
        n.staged = s
        if s is None:
            self.staged.discard(n)
        else:
            self.staged.add(n)

    def _record(self, branch: str, pairs, durable: bool = False) -> None:
        """Journal the rows at (and below) each ``(directory, name)``; mark the branch dirty."""
        self.changed[branch] = time.monotonic()
        self.dirty.add(branch)
        if self.journal is None:
            return
        bt = self.forest.trees.get(branch)
        if bt is None:
            return
        clear, rows = [], {}
        for d, name in pairs:
            dp = self.forest.path(d)
            if dp is None:
                continue
            path = f"{dp}/{name}" if dp else name
            clear.append(path)
            self.forest.rows_at(d, name, path, False, rows)
        self.journal.update(branch, bt.base, clear, rows, durable)

    def _record_node(self, n: LiveNode, durable: bool = False) -> None:
        if n.parent is not None and self.forest.attached(n):
            self._record(n.branch, [(n.parent, n.name)], durable)

    def _writable_dir(self, d) -> LiveNode:
        if not self.writable:
            raise _err(errno.EROFS)
        if not isinstance(d, LiveNode):
            raise _err(errno.EROFS)
        if d.kind != "dir":
            raise _err(errno.ENOTDIR)
        if not self.forest.attached(d):
            raise _err(errno.ENOENT, "directory was removed")
        return d

    def _new_spool(self) -> tuple[str, int]:
        spool = os.path.join(self.spool_dir, uuid.uuid4().hex)
        return spool, os.open(spool, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    # -- namespace operations -----------------------------------------------------------------------
    def mknod(self, d, name: str, mode: int) -> LiveNode:
        """``mknod`` of a regular file creates an empty file, as on Linux; device nodes,
        FIFOs and sockets are not versioned (EPERM)."""
        if not stat.S_ISREG(mode) and stat.S_IFMT(mode) != 0:
            raise _err(errno.EPERM, "only files, directories and symlinks are versioned")
        n, s, fd = self.create(d, name, mode)
        os.close(fd)
        self.release(n, s)
        return n

    def create(self, d, name: str, mode: int) -> tuple[LiveNode, Staged, int]:
        check_name(name)
        with self.lock:
            d = self._writable_dir(d)
            if self.forest.child(d, name) is not None:
                raise _err(errno.EEXIST, name)
            spool, fd = self._new_spool()
            n = LiveNode(self.forest.alloc(), "file", d.branch, d, name)
            n.perm = mode & 0o7777
            n.mtime_ns = time.time_ns()
            n.commit, n.default_mtime = d.commit, d.default_mtime
            s = Staged(spool, OPEN, 1, self._next_gen())
            self._set_staged(n, s)
            self.forest.attach(d, name, n)
            self._record(d.branch, [(d, name)])
            return n, s, fd

    def mkdir(self, d, name: str, mode: int) -> LiveNode:
        check_name(name)
        with self.lock:
            d = self._writable_dir(d)
            if self.forest.child(d, name) is not None:
                raise _err(errno.EEXIST, name)
            n = LiveNode(self.forest.alloc(), "dir", d.branch, d, name)
            n.children, n.base, n.origin = {}, {}, EMPTY_TREE
            n.perm = mode & 0o7777 or live.DEFAULT_DIR_PERM
            n.commit, n.default_mtime = d.commit, time.time_ns()
            self.forest.attach(d, name, n)
            self._record(d.branch, [(d, name)])
            return n

    def symlink(self, d, name: str, target: bytes) -> LiveNode:
        check_name(name)
        if len(target) > 4095:
            raise _err(errno.ENAMETOOLONG)
        with self.lock:
            d = self._writable_dir(d)
            if self.forest.child(d, name) is not None:
                raise _err(errno.EEXIST, name)
            n = LiveNode(self.forest.alloc(), "link", d.branch, d, name)
            n.target = bytes(target)
            n.mtime_ns = time.time_ns()
            n.commit, n.default_mtime = d.commit, d.default_mtime
            self.forest.attach(d, name, n)
            self._record(d.branch, [(d, name)])
            return n

    def unlink(self, d, name: str) -> None:
        with self.lock:
            d = self._writable_dir(d)
            c = self.forest.child(d, name)
            if c is None:
                raise _err(errno.ENOENT, name)
            if c.kind == "dir":
                raise _err(errno.EISDIR, name)
            self.forest.detach(d, name)
            self._record(d.branch, [(d, name)])

    def rmdir(self, d, name: str) -> None:
        with self.lock:
            d = self._writable_dir(d)
            c = self.forest.child(d, name)
            if c is None:
                raise _err(errno.ENOENT, name)
            if c.kind != "dir":
                raise _err(errno.ENOTDIR, name)
            if self.forest.load(c):
                raise _err(errno.ENOTEMPTY, name)
            self.forest.detach(d, name)
            self._record(d.branch, [(d, name)])

    def rename(self, d1, n1: str, d2, n2: str, flags: int = 0) -> None:
        check_name(n2)
        with self.lock:
            d1, d2 = self._writable_dir(d1), self._writable_dir(d2)
            if d1.branch != d2.branch:
                raise _err(errno.EXDEV, "rename between branches")
            src = self.forest.child(d1, n1)
            if src is None:
                raise _err(errno.ENOENT, n1)
            dst = self.forest.child(d2, n2)
            if flags & RENAME_EXCHANGE:
                if flags & ~RENAME_EXCHANGE:
                    raise _err(errno.EINVAL)
                if dst is None:
                    raise _err(errno.ENOENT, n2)
                if src is dst:
                    return
                if (src.kind == "dir" and self.forest.is_ancestor(src, d2)) or \
                        (dst.kind == "dir" and self.forest.is_ancestor(dst, d1)):
                    raise _err(errno.EINVAL, "cannot move a directory into itself")
                d1.children[n1], d2.children[n2] = dst, src
                dst.parent, dst.name, src.parent, src.name = d1, n1, d2, n2
                self._record(d1.branch, [(d1, n1), (d2, n2)])
                return
            if flags & ~RENAME_NOREPLACE:
                raise _err(errno.EINVAL)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise _err(errno.EEXIST, n2)
            if src is dst:
                return
            if src.kind == "dir" and self.forest.is_ancestor(src, d2):
                raise _err(errno.EINVAL, "cannot move a directory into itself")
            if dst is not None:
                if src.kind == "dir":
                    if dst.kind != "dir":
                        raise _err(errno.ENOTDIR, n2)
                    if self.forest.load(dst):
                        raise _err(errno.ENOTEMPTY, n2)
                elif dst.kind == "dir":
                    raise _err(errno.EISDIR, n2)
                self.forest.detach(d2, n2)
            del d1.children[n1]
            self.forest.attach(d2, n2, src)
            self._record(d1.branch, [(d1, n1), (d2, n2)])

    # -- file data ----------------------------------------------------------------------------------
    def open_write(self, n: LiveNode, truncate: bool) -> tuple[Staged, int]:
        """Open a file for writing. A staged file is reopened; a committed one becomes staged
        (same node, same inode) with its content copied to a spool first unless truncating."""
        if not self.writable or not isinstance(n, LiveNode):
            raise _err(errno.EROFS)
        if n.kind != "file":
            raise _err(errno.EISDIR)
        with self.lock:
            s = n.staged
            if s is not None:
                fd = os.open(s.spool, os.O_RDWR)
                if truncate:
                    os.ftruncate(fd, 0)
                    n.mtime_ns = time.time_ns()
                s.writers += 1
                s.state = OPEN
                s.gen = self._next_gen()
                self._record_node(n)
                return s, fd
            entry = n.entry
        spool, fd = self._new_spool()
        try:
            if entry is not None and not truncate:
                reader = self.repo.open_file(entry)
                pos = 0
                for piece in reader.chunks(self.repo.pool):
                    os.pwrite(fd, piece, pos)
                    pos += len(piece)
        except BaseException:
            os.close(fd)
            _unlink(spool)
            raise
        with self.lock:
            if n.staged is not None:                # staged by another opener meanwhile
                os.close(fd)
                _unlink(spool)
                return self.open_write(n, truncate)
            s = Staged(spool, OPEN, 1, self._next_gen())
            self._set_staged(n, s)
            if truncate:
                n.mtime_ns = time.time_ns()
            self._record_node(n)
            return s, fd

    def release(self, n: LiveNode, s: Staged) -> bool:
        """A writer closed. Returns True when the file is now ready to ingest."""
        with self.lock:
            s.writers = max(0, s.writers - 1)
            if s.writers:
                return False
            if n.staged is not s or not self.forest.attached(n):
                _unlink(s.spool)                  # replaced or removed while open
                return False
            if s.state == OPEN:
                s.state = CLOSED
                s.gen = self._next_gen()
                self._record_node(n)
                return True
            return False

    def check_size(self, size: int) -> None:
        if size > self.max_file_size:
            raise _err(errno.EFBIG, f"files are limited to {self.max_file_size} bytes "
                                    "(--max-file-size)")

    def truncate(self, n: LiveNode, size: int, fd: Optional[int] = None) -> None:
        if not self.writable or not isinstance(n, LiveNode):
            raise _err(errno.EROFS)
        self.check_size(size)
        if n.kind != "file":
            raise _err(errno.EISDIR)
        if fd is not None:
            os.ftruncate(fd, size)
            with self.lock:
                n.mtime_ns = time.time_ns()
            return
        with self.lock:
            s = n.staged
            if s is not None:
                os.truncate(s.spool, size)
                s.gen = self._next_gen()
                if s.writers == 0:
                    s.state = CLOSED
                n.mtime_ns = time.time_ns()
                self._record_node(n)
                return
        s, wfd = self.open_write(n, truncate=size == 0)
        try:
            os.ftruncate(wfd, size)
        finally:
            os.close(wfd)
            self.release(n, s)

    def set_attrs(self, n, mode: Optional[int] = None, mtime_ns: Optional[int] = None) -> None:
        if not self.writable or not isinstance(n, LiveNode):
            raise _err(errno.EROFS)
        with self.lock:
            if mode is not None:
                n.perm = mode & 0o7777
            if mtime_ns is not None and n.kind != "dir":
                n.mtime_ns = mtime_ns
            if n.staged is not None and n.staged.writers:
                self.changed[n.branch] = time.monotonic()   # its release journals it
            elif n.kind != "dir" or mode is not None:
                self._record_node(n)

    def sync_file(self, n: LiveNode, s: Staged) -> None:
        """fsync on a descriptor open for writing: store the content as it is now, so that
        the next commit holds it although the file stays open."""
        with self.lock:
            path = self.forest.path(n)
            if path is None or n.staged is not s:
                return
            s.synced = live.SYNCING
            branch = n.branch
        res = self.repo.ingest(s.spool, path, branch)
        with self.lock:
            if s.synced is live.SYNCING and n.staged is s:
                s.synced = res.entry
                self._record_node(n, durable=True)


__all__ = ["Staging", "Staged", "status_lines", "orphan_spools", "NotFound", "OPEN", "CLOSED", "DURABLE",
           "INGESTED", "FAILED", "RENAME_NOREPLACE", "RENAME_EXCHANGE"]

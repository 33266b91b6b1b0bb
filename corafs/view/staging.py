"""Writing into branch directories (docs/mount.md): the live trees of the branches, the spool
files that hold written data, the journal, ingest, commits and crash recovery. Pure model, no
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
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from typing import Optional

from ..core import tree as treemod
from ..core.writes import describe_changes
from ..errors import CorafsError, IngestCancelled, NotFound
from ..store.fsutil import fsync_path as _fsync_path
from . import live
from .journal import Journal, read_rows
from .live import (CLOSED, DURABLE, EMPTY_TREE, FAILED, INGESTED, OPEN, Forest, LiveNode,
                   Staged, check_name, rows_to_changes)

log = logging.getLogger("corafs.staging")


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class Staging:
    def __init__(self, repo, root: Optional[str], commit_delay: float = 1.0,
                 author: Optional[str] = None):
        self.repo = repo
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
        self.max_file_size = 256 << 30

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

    # -- ingest --------------------------------------------------------------------------------------
    def to_ingest(self) -> list[LiveNode]:
        with self.lock:
            return [n for n in self.staged
                    if n.staged.state in (CLOSED, DURABLE) and n.staged.writers == 0]

    def ingest(self, n: LiveNode) -> None:
        """Store one closed file now (see ``ingest_ready``)."""
        self._ingest_batch(n.branch, [n])

    def ingest_ready(self, branch: Optional[str] = None) -> None:
        """Make every closed file durable and store it (in a worker thread). Small files of a
        branch go together: one syncfs, one pack, one journal transaction for all of them, so
        the cost of a file does not grow with how many are staged (git clone, tar -x). A large
        file goes alone, so that a cancelled unmount loses no one else's work."""
        by_branch: dict[str, list[LiveNode]] = {}
        for n in self.to_ingest():
            if branch is None or n.branch == branch:
                by_branch.setdefault(n.branch, []).append(n)
        for b, nodes in by_branch.items():
            t = self.repo.tuning
            small = [n for n in nodes if n.size < t.batch_file_limit]
            for i in range(0, len(small), t.batch_files):
                self._ingest_batch(b, small[i:i + t.batch_files])
            for n in nodes:
                if n.size >= t.batch_file_limit:
                    self._ingest_batch(b, [n])

    def _ingest_batch(self, branch: str, nodes: list[LiveNode]) -> None:
        """Durable, then stored. Any failure leaves a file staged as FAILED with the reason; a
        change to a file meanwhile makes its result moot; a cancel leaves them durable."""
        with self.lock:
            items = []
            for n in nodes:
                s = n.staged
                if s is None or s.state not in (CLOSED, DURABLE) or s.writers:
                    continue
                path = self.forest.path(n)
                if path is not None and n.branch == branch:
                    items.append((n, s, s.gen, path))
            stop = self.stop
        if not items:
            return
        try:
            closed = [x for x in items if x[1].state == CLOSED]
            if closed:
                _sync_files([s.spool for _n, s, _g, _p in closed], self.spool_dir)
                with self.lock:
                    pairs = []
                    for n, s, gen, _p in closed:
                        if s.gen == gen and n.staged is s and s.state == CLOSED:
                            s.state = DURABLE
                            pairs.append((n.parent, n.name))
                    if pairs:
                        self._record(branch, pairs, durable=True)
        except Exception as e:  # the spools could not be made durable: each stays staged
            results = [e] * len(items)
            with self.lock:
                self._record_results(branch, items, results)
            return
        # the stored objects are claimed until the journal refers to them: a gc in between
        # would find them unreachable
        with self.repo.store.claim():
            try:
                results = self.repo.ingest_many([(s.spool, p) for _n, s, _g, p in items],
                                                branch, cancel=stop)
            except IngestCancelled:
                return                            # unmounting: they stay staged (durable)
            except Exception as e:  # e.g. the branch was deleted: every file keeps its data
                results = [e] * len(items)
            with self.lock:
                self._record_results(branch, items, results)

    def _record_results(self, branch: str, items: list, results: list) -> None:
        """Each file's ingest result: INGESTED with its entry, or FAILED with the reason."""
        pairs = []
        for (n, s, gen, path), res in zip(items, results):
            if s.gen != gen or n.staged is not s:
                continue
            if isinstance(res, BaseException):
                log.error("%s:%s could not be stored, it stays staged: %s: %s", branch, path,
                          type(res).__name__, res)
                s.state = FAILED
                s.reason = f"{type(res).__name__}: {res}"
            elif s.state == DURABLE:
                if res.reason:
                    log.warning("%s:%s stored as an opaque file (%s)", branch, path,
                                res.reason)
                s.state = INGESTED
                s.entry = res.entry
                s.reason = res.reason
            else:
                continue
            if n.parent is not None and self.forest.attached(n):
                pairs.append((n.parent, n.name))
        if pairs:
            self._record(branch, pairs, durable=True)

    # -- committing ------------------------------------------------------------------------------------
    def due(self, now: Optional[float] = None) -> list[str]:
        """Branches whose quiet period has passed with nothing open or waiting for ingest."""
        now = time.monotonic() if now is None else now
        with self.lock:
            busy = {n.branch for n in self.staged if n.staged.busy}
            return [b for b in self.dirty if b not in busy
                    and now - self.changed.get(b, 0) >= self.commit_delay]

    def pending(self) -> list[str]:
        with self.lock:
            return sorted(self.dirty)

    def _commit_lock(self, branch: str) -> threading.Lock:
        with self.lock:
            return self._commit_locks.setdefault(branch, threading.Lock())

    def commit(self, branch: str, message: Optional[str] = None) -> Optional[str]:
        """Commit everything committable on ``branch`` (closed files are ingested first);
        files still open or failed stay staged."""
        with self._commit_lock(branch):
            self.ingest_ready(branch)
            with self.lock:
                bt = self.forest.trees.get(branch)
                if bt is None:
                    self.dirty.discard(branch)
                    return None
                rows = self.forest.rows(branch, committable=True)
                base = bt.base
                bt.committing = True
            try:
                cid, t0 = self._commit_rows(branch, base, rows, message)
                new = cid or self.repo.head(branch)
            except BaseException:
                with self.lock:
                    bt.committing = False
                raise
            with self.lock:
                bt.committing = False
                if cid:
                    self.recovered.discard(branch)
                if self.forest.trees.get(branch) is bt:
                    self.forest.reconcile(branch, t0, new)
                    self._rewrite(branch)
            if cid:
                log.info("committed %s to %s", cid[:12], branch)
            return cid

    def _commit_rows(self, branch: str, base: str, rows: dict, message: Optional[str]):
        base_tree = self.repo.commit_obj(base).tree
        if not rows:
            return None, base_tree
        changes = rows_to_changes(rows)
        w = self.repo.store.writer()
        try:
            t0 = treemod.apply(self.repo, w, base_tree, changes)
            if message is None:
                message = describe_changes(self.repo, base_tree, changes)
                if branch in self.recovered:
                    message = f"Recover after an unclean unmount: {message}"
        except BaseException:
            w.abort()
            raise
        cid, _ = self.repo.commit_changes(branch, changes, message, self.author,
                                          expected=base, writer=w)
        return cid, t0

    def _rewrite(self, branch: str) -> None:
        """After a commit or a merge of another writer's commit: the branch's rows anew."""
        bt = self.forest.trees.get(branch)
        rows = self.forest.rows(branch, committable=False) if bt is not None else {}
        if not rows:
            self.dirty.discard(branch)
        if self.journal is not None:
            self.journal.replace(branch, bt.base if bt is not None and rows else None, rows)

    def commit_all(self, on_error=None) -> list[str]:
        """Commit every branch with changes; ``on_error(exc)`` hears of each that failed
        (it stays staged)."""
        out = []
        for b in self.pending():
            try:
                cid = self.commit(b)
            except Exception as e:
                log.exception("commit of staged changes on %s failed; they stay staged", b)
                if on_error is not None:
                    on_error(e)
                continue
            if cid:
                out.append(cid)
        return out

    def refresh(self, branches: dict[str, str]) -> None:
        """Another writer moved branches (``branches``: name -> head): merge into the live
        trees; a branch that is gone loses its live tree (its staged work stays journaled)."""
        with self.lock:
            for b, bt in list(self.forest.trees.items()):
                if bt.committing:
                    continue                      # the commit merges when it lands
                head = branches.get(b)
                if head is None:
                    if b in self.dirty:
                        log.warning("branch %s was deleted; its staged changes are kept in the "
                                    "journal until the next mount recovers them", b)
                    self.forest.drop_branch(b)
                    self.forest.invalidations.append(("entry", 1, b))
                    continue
                if head != bt.base:
                    old = self.repo.commit_obj(bt.base).tree
                    self.forest.reconcile(b, old, head)
                    if b in self.dirty:
                        self._rewrite(b)

    # -- recovery -------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """After a crash: commit what was closed and durable (ingesting it now), keep what was
        still being written in ``lost+found``, and say so, one line per file. Never raises:
        a mount always starts."""
        if self.journal is None:
            return []
        report: list[str] = list(self._notes)
        self._notes = []
        lost = os.path.join(self.root, "lost+found")
        legacy = os.path.join(self.root, "journal.json")
        if os.path.exists(legacy):
            dest = os.path.join(lost, f"journal-{int(time.time())}.json")
            os.makedirs(lost, exist_ok=True)
            shutil.move(legacy, dest)
            report.append(f"an old-format journal was kept as {dest}")
        try:
            data = self.journal.load()
        except Exception as e:  # an unreadable journal must not stop the mount
            self.journal.close()
            report.append(self._set_aside_journal(self.journal.path, e))
            self.journal = Journal(os.path.join(self.root, "journal.db"))
            return report
        for branch, (base, rows) in sorted(data.items()):
            try:
                report += self._recover_branch(branch, base, rows, lost)
            except Exception as e:
                log.exception("recovery of %s failed", branch)
                dest = os.path.join(lost, f"{branch}.rows.json")
                os.makedirs(lost, exist_ok=True)
                with open(dest, "w") as f:
                    json.dump({"base": base, "rows": rows}, f, indent=1)
                for path, r in rows.items():
                    if r.get("op") == "staged":
                        self._keep(r, branch, path, lost)
                report.append(f"recovery of branch {branch} failed ({e}); its staged changes "
                              f"are kept in {dest}")
                self.journal.replace(branch, None, {})
        self.remove_orphan_spools()
        if report:
            with open(os.path.join(self.root, "recovered.log"), "a") as f:
                for line in report:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        return report

    def _keep(self, r: dict, branch: str, path: str, lost: str) -> Optional[str]:
        spool = r.get("spool")
        if not spool or not os.path.exists(spool):
            return None
        dest = os.path.join(lost, branch, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest):
            dest = f"{dest}.{uuid.uuid4().hex[:6]}"
        shutil.move(spool, dest)
        return dest

    def _recover_branch(self, branch: str, base: str, rows: dict, lost: str) -> list[str]:
        """Rebuild the branch's live tree from its journal rows: what was closed and durable is
        staged again (the committer ingests and commits it as usual, in the background), what
        was still open goes to lost+found; a branch moved meanwhile is merged as usual."""
        report = []
        branches = self.repo.branches()
        if branch not in branches:
            for path, r in rows.items():
                if r.get("op") == "staged":
                    dest = self._keep(r, branch, path, lost)
                    report.append(f"{branch}:{path}: branch no longer exists; kept as {dest}")
            if rows:
                report.append(f"branch {branch} no longer exists: {len(rows)} staged change(s) "
                              "not committed")
            return report
        head = branches[branch]
        try:
            start = base if base and self.repo.store.has(base) else head
            self.repo.commit_obj(start)
        except CorafsError:
            start = head
        try:
            with self.lock:
                self.forest.trees.pop(branch, None)
                self.forest.tree(branch, start)
                for path, r in sorted(rows.items()):
                    report += self._replay(branch, path, r, lost)
                if start != head:
                    self.forest.reconcile(branch, self.repo.commit_obj(start).tree, head)
                self.recovered.add(branch)
                self.dirty.add(branch)
                self._rewrite(branch)
                self.changed[branch] = 0.0
        except Exception:
            with self.lock:
                self.forest.drop_branch(branch)
                self.recovered.discard(branch)
            raise
        return report

    def _replay(self, branch: str, path: str, r: dict, lost: str) -> list[str]:
        parts = path.split("/")
        d = self.forest.tree(branch).root
        for part in parts[:-1]:
            c = self.forest.child(d, part)
            if c is None or c.kind != "dir":
                if c is not None:
                    self.forest.detach(d, part)
                c = LiveNode(self.forest.alloc(), "dir", branch, d, part)
                c.children, c.base, c.origin = {}, {}, EMPTY_TREE
                self.forest.attach(d, part, c)
            d = c
        name, op = parts[-1], r.get("op")
        what = f"{branch}:{path}"
        if op == "staged":
            state, spool = r.get("state"), r.get("spool")
            synced = r.get("synced")
            if state in (DURABLE, FAILED) and spool and os.path.exists(spool):
                n = self._replace_node(d, name, "file")
                n.perm = r.get("mode") or live.DEFAULT_FILE_PERM
                n.mtime_ns = r.get("mtime_ns")
                self._set_staged(n, Staged(spool, DURABLE, 0, self._next_gen()))
                return [f"{what} recovered (written and closed; committed shortly)"]
            dest = self._keep(r, branch, path, lost)
            if synced:
                n = self._replace_node(d, name, "file")
                n.entry = {k: v for k, v in synced.items() if k not in ("mode", "mtime_ns")}
                n.perm = r.get("mode") or live.DEFAULT_FILE_PERM
                n.mtime_ns = r.get("mtime_ns")
                return [f"{what} recovered as of its last fsync; what was written after it "
                        f"is kept as {dest}"]
            if dest:
                return [f"{what} was still being written: kept as {dest}"]
            return [f"{what} was still being written and has no data"]
        if op == "delete":
            self.forest.detach(d, name)
        elif op == "mkdir":
            n = self._replace_node(d, name, "dir")
            n.children, n.base, n.origin = {}, {}, EMPTY_TREE
        elif op == "entry":
            self.forest.detach(d, name)
            self.forest.attach(d, name, live.node_from_entry(
                self.forest.alloc(), branch, d, name, r["entry"], d.default_mtime))
        return [f"{what} recovered ({op})"]

    def _replace_node(self, d: LiveNode, name: str, kind: str) -> LiveNode:
        self.forest.detach(d, name)
        n = LiveNode(self.forest.alloc(), kind, d.branch, d, name)
        n.commit, n.default_mtime = d.commit, d.default_mtime
        self.forest.attach(d, name, n)
        return n

    def remove_orphan_spools(self, keep: set[str] = frozenset()) -> list[str]:
        """Spool files no journal row refers to are leftovers of an interrupted write."""
        if self.spool_dir is None:
            return []
        with self.lock:
            live_spools = {n.staged.spool for n in self.staged}
            try:
                rows = self.journal.load() if self.journal else {}
            except Exception:
                return []
            for _b, (_base, rs) in rows.items():
                live_spools |= {r.get("spool") for r in rs.values() if r.get("op") == "staged"}
            removed = []
            for fn in os.listdir(self.spool_dir):
                p = os.path.join(self.spool_dir, fn)
                if p not in live_spools and p not in keep:
                    _unlink(p)
                    removed.append(p)
            return removed


def _unlink(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _sync_files(paths: list[str], directory: str) -> None:
    """Make files and their directory entries durable: one syncfs of the file system when
    there are several (one fsync each costs as much as the whole syncfs), else fsyncs."""
    if len(paths) > 2:
        try:
            import ctypes
            fd = os.open(directory, os.O_RDONLY)
            try:
                if ctypes.CDLL("libc.so.6", use_errno=True).syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass
    for p in paths:
        _fsync_path(p)
    _fsync_path(directory)


def orphan_spools(repo_path: str) -> list[tuple[str, int]]:
    """Spool files no journal row refers to (call only while the repository is not mounted)."""
    root = os.path.join(repo_path, "staging")
    spool_dir = os.path.join(root, "spool")
    if not os.path.isdir(spool_dir):
        return []
    used = {r.get("spool") for _b, (_base, rows) in read_rows(root).items()
            for r in rows.values() if r.get("op") == "staged"}
    out = []
    for fn in sorted(os.listdir(spool_dir)):
        p = os.path.join(spool_dir, fn)
        if p not in used:
            try:
                out.append((p, os.path.getsize(p)))
            except OSError:
                pass
    return out


def status_lines(repo_path: str) -> list[str]:
    """What `corafs status` shows: staged changes (with why a file is held back) and files kept
    after a crash."""
    root = os.path.join(repo_path, "staging")
    out = []
    for branch, (_base, rows) in sorted(read_rows(root).items()):
        for path, r in sorted(rows.items()):
            op = r.get("op")
            if op == "staged":
                what = f"written ({r.get('state')})"
                if r.get("state") == FAILED:
                    what = f"NOT STORED: {r.get('reason')}"
            else:
                what = {"entry": "changed", "delete": "deleted", "mkdir": "new directory"}.get(
                    op, op)
            out.append(f"staged   {branch}:{path}  {what}")
    lost = os.path.join(root, "lost+found")
    if os.path.isdir(lost):
        for dirpath, _d, files in os.walk(lost):
            for fn in sorted(files):
                p = os.path.join(dirpath, fn)
                out.append(f"unsaved  {os.path.relpath(p, lost)}  (was being written when the "
                           f"mount stopped; kept at {p})")
    return out


__all__ = ["Staging", "Staged", "status_lines", "NotFound", "OPEN", "CLOSED", "DURABLE",
           "INGESTED", "FAILED", "RENAME_NOREPLACE", "RENAME_EXCHANGE"]

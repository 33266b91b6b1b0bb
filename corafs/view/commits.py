"""Ingest and commits of a mount's branches (part of ``Staging``, see corafs.view.staging).

Closed files are made durable and stored in batches (one syncfs, one pack, one journal
transaction for many small files); a branch is committed from its journal rows in one
compare-and-swap of its ref, and a moved ref re-applies the staged changes on top.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

from ..core import commitmeta, tree as treemod
from ..core.writes import describe_changes
from ..errors import IngestCancelled
from ..store.fsutil import fsync_path as _fsync_path
from .live import (CLOSED, DURABLE, FAILED, INGESTED, LiveNode, rows_to_changes)

log = logging.getLogger("corafs.staging")


class CommitsMixin:
    """The ingest and commit half of :class:`corafs.view.staging.Staging`."""

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
        meta = dict(self.pending_meta.get(branch, {}))
        cid, _ = self.repo.commit_changes(branch, changes, message, self.author,
                                          expected=base, writer=w, meta=meta)
        if cid and meta and self.pending_meta.get(branch) == meta:
            self.pending_meta.pop(branch, None)      # carried by this commit
        return cid, t0

    def set_meta(self, branch: str, key: str, value) -> None:
        """Metadata for the next commit of ``branch`` (``setfattr -n user.corafs.meta.loss
        -v 0.12 MNT/main``): it rides on the next commit that has changes, and is kept in
        memory until then (an unmount with nothing to commit drops it)."""
        pending = dict(self.pending_meta.get(branch, {}))
        pending[key] = value
        self.pending_meta[branch] = commitmeta.check(pending)

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

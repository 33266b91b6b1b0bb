"""After a crash: re-apply a mount's journal to the branches as they are now, keep what could
not be committed in ``staging/lost+found``, remove spools nothing refers to, and say what is
staged (``corafs status``). Part of ``Staging`` (see corafs.view.staging) plus the functions
the CLI uses while nothing is mounted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from typing import Optional

from ..core.journal import Journal, read_rows
from ..errors import CorafsError
from ..store.fsutil import unlink_quiet as _unlink
from . import live
from .live import (DURABLE, EMPTY_TREE, FAILED, LiveNode, Staged)

log = logging.getLogger("corafs.staging")


class RecoveryMixin:
    """The recovery half of :class:`corafs.view.staging.Staging`."""

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

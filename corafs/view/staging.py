"""Staged writes of a mount: what has been written into branch directories but not committed
yet (BRIEF section 3). Pure model, no pyfuse3.

Each branch has an *overlay*: path -> Staged. A written file is spooled to
``REPO/staging/spool/`` (never held in memory), ingested when its last writer closes, and
committed with everything else that changed on the branch once nothing has been open for
writing and nothing has changed for ``commit_delay`` seconds (or at once on fsync/unmount).

Crash safety: the overlay (without file data) is journaled to ``REPO/staging/journal.json``,
rewritten atomically on every state change. The next mount commits what had been fully
written (closed) and moves files that were still open into ``staging/lost+found`` and reports
them; nothing is dropped silently, and no half commit is ever visible (commits are atomic)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from typing import Optional

from ..core import tree as treemod
from ..core.repository import describe_changes
from ..errors import CorafsError, NotFound

log = logging.getLogger("corafs.staging")

OPEN, CLOSED, INGESTED = "open", "closed", "ingested"


@dataclasses.dataclass
class Staged:
    kind: str                      # "file" (spooled), "entry" (a tree entry moved here),
                                   # "delete", "dir"
    spool: Optional[str] = None
    state: str = OPEN
    writers: int = 0
    entry: Optional[dict] = None
    gen: int = 0
    reason: Optional[str] = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "spool": self.spool, "state": self.state, "entry": self.entry,
                "gen": self.gen}


class Staging:
    def __init__(self, repo, root: str, commit_delay: float = 1.0, author: Optional[str] = None):
        self.repo = repo
        self.root = root
        self.spool_dir = os.path.join(root, "spool")
        self.journal = os.path.join(root, "journal.json")
        self.commit_delay = commit_delay
        self.author = author
        self.lock = threading.RLock()
        self.items: dict[str, dict[str, Staged]] = {}
        self.changed: dict[str, float] = {}
        self._gen = 0
        os.makedirs(self.spool_dir, exist_ok=True)

    # -- journal -------------------------------------------------------------------------------
    def _save(self) -> None:
        data = {b: {p: s.to_json() for p, s in items.items()} for b, items in self.items.items()
                if items}
        tmp = f"{self.journal}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal)

    def _touch(self, branch: str) -> None:
        self.changed[branch] = time.monotonic()
        self._save()

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    # -- queries -------------------------------------------------------------------------------
    def get(self, branch: str, path: str) -> Optional[Staged]:
        with self.lock:
            return self.items.get(branch, {}).get(path)

    def children(self, branch: str, dirpath: str) -> dict[str, Optional[Staged]]:
        """Overlay of the direct children of ``dirpath``: name -> Staged, or None for a
        directory implied by a staged path below it."""
        prefix = f"{dirpath}/" if dirpath else ""
        out: dict[str, Optional[Staged]] = {}
        with self.lock:
            for path, s in self.items.get(branch, {}).items():
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):]
                name, sep, _ = rest.partition("/")
                if sep:
                    if s.kind != "delete":
                        out.setdefault(name, None)
                else:
                    out[name] = s
        return out

    def pending(self) -> dict[str, dict[str, Staged]]:
        with self.lock:
            return {b: dict(i) for b, i in self.items.items() if i}

    # -- writing -------------------------------------------------------------------------------
    def _new_spool(self) -> str:
        return os.path.join(self.spool_dir, uuid.uuid4().hex)

    def create(self, branch: str, path: str) -> tuple[Staged, int]:
        with self.lock:
            spool = self._new_spool()
            fd = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            old = self.items.setdefault(branch, {}).get(path)
            if old is not None and old.kind == "file" and old.spool and old.writers == 0:
                _unlink(old.spool)
            s = Staged("file", spool, OPEN, 1, gen=self._next_gen())
            self.items[branch][path] = s
            self._touch(branch)
            return s, fd

    def open_write(self, branch: str, path: str, truncate: bool,
                   committed: Optional[dict]) -> tuple[Staged, int]:
        """Open a file of the branch for writing: a staged one in place, a committed one by
        copying its content into a new spool first (unless truncating)."""
        with self.lock:
            s = self.items.get(branch, {}).get(path)
            if s is not None and s.kind == "file":
                fd = os.open(s.spool, os.O_RDWR)
                if truncate:
                    os.ftruncate(fd, 0)
                s.writers += 1
                s.state = OPEN
                s.gen = self._next_gen()
                self._touch(branch)
                return s, fd
            entry = s.entry if s is not None and s.kind == "entry" else committed
        spool = self._new_spool()
        fd = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        if entry is not None and not truncate:
            reader = self.repo.open_file(entry)
            pos = 0
            for piece in reader.chunks(self.repo.pool):
                os.pwrite(fd, piece, pos)
                pos += len(piece)
        with self.lock:
            s = Staged("file", spool, OPEN, 1, gen=self._next_gen())
            self.items.setdefault(branch, {})[path] = s
            self._touch(branch)
            return s, fd

    def truncate(self, branch: str, path: str, size: int, committed: Optional[dict]) -> Staged:
        s = self.get(branch, path)
        if s is None or s.kind != "file":
            s, fd = self.open_write(branch, path, size == 0, committed)
            os.ftruncate(fd, size)
            os.close(fd)
            self.release(branch, s)
            return s
        with self.lock:
            os.truncate(s.spool, size)
            s.gen = self._next_gen()
            if s.writers == 0:
                s.state = CLOSED
            self._touch(branch)
            return s

    def path_of(self, branch: str, st: Staged) -> Optional[str]:
        """Where a staged file is now (it may have been renamed while open)."""
        with self.lock:
            for p, s in self.items.get(branch, {}).items():
                if s is st:
                    return p
        return None

    def release(self, branch: str, st: Staged) -> tuple[Optional[str], bool]:
        """A writer of ``st`` closed; returns (its current path, whether it is now ready to
        ingest). A file unlinked or replaced while open is simply dropped."""
        with self.lock:
            st.writers = max(0, st.writers - 1)
            path = self.path_of(branch, st)
            if path is None:
                if st.writers == 0:
                    _unlink(st.spool)
                return None, False
            if st.writers == 0 and st.state == OPEN:
                st.state = CLOSED
                self._touch(branch)
                return path, True
            return path, False

    def ingest(self, branch: str, path: str) -> Optional[Staged]:
        """Ingest a closed file (in a worker thread). Safe against concurrent rewrites: the
        result is dropped if the file changed meanwhile."""
        with self.lock:
            s = self.items.get(branch, {}).get(path)
            if s is None or s.kind != "file" or s.state != CLOSED:
                return s
            gen, spool = s.gen, s.spool
        res = self.repo.ingest(spool, path, branch)
        if res.reason:
            log.warning("%s:%s stored as an opaque file (%s)", branch, path, res.reason)
        with self.lock:
            s = self.items.get(branch, {}).get(path)
            if s is not None and s.gen == gen and s.state == CLOSED and s.spool == spool:
                s.state = INGESTED
                s.entry = res.entry
                s.reason = res.reason
                self._save()
            return s

    def unlink(self, branch: str, path: str, in_head: bool) -> None:
        with self.lock:
            items = self.items.setdefault(branch, {})
            s = items.pop(path, None)
            if s is not None and s.kind == "file" and s.writers == 0:
                _unlink(s.spool)
            if in_head:
                items[path] = Staged("delete", gen=self._next_gen())
            self._touch(branch)

    def mkdir(self, branch: str, path: str) -> None:
        with self.lock:
            self.items.setdefault(branch, {})[path] = Staged("dir", gen=self._next_gen())
            self._touch(branch)

    def rename(self, branch: str, old: str, new: str, head_entry: Optional[dict]) -> None:
        """Move ``old`` (and, for a directory, everything staged below it) to ``new``,
        replacing whatever was there."""
        with self.lock:
            items = self.items.setdefault(branch, {})
            for p in [p for p in items if p == new or p.startswith(new + "/")]:
                s = items.pop(p)
                if s.kind == "file" and s.writers == 0:
                    _unlink(s.spool)
            moved = {p: items.pop(p) for p in list(items)
                     if p == old or p.startswith(old + "/")}
            own = moved.pop(old, None)
            if own is not None and own.kind != "delete":
                items[new] = own
            elif head_entry is not None:
                items[new] = Staged("entry", state=INGESTED, entry=head_entry,
                                    gen=self._next_gen())
            else:
                items[new] = Staged("delete", gen=self._next_gen())   # replace with nothing
            for p, s in moved.items():
                items[new + p[len(old):]] = s
            if head_entry is not None:
                items[old] = Staged("delete", gen=self._next_gen())
            self._touch(branch)

    # -- committing ----------------------------------------------------------------------------
    def due(self, now: Optional[float] = None) -> list[str]:
        """Branches whose quiet period has passed with nothing open and nothing to ingest."""
        now = time.monotonic() if now is None else now
        out = []
        with self.lock:
            for b, items in self.items.items():
                if not items or now - self.changed.get(b, 0) < self.commit_delay:
                    continue
                if any(s.kind == "file" and s.state != INGESTED for s in items.values()):
                    continue
                out.append(b)
        return out

    def to_ingest(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(b, p) for b, items in self.items.items() for p, s in items.items()
                    if s.kind == "file" and s.state == CLOSED]

    def commit(self, branch: str, message: Optional[str] = None) -> Optional[str]:
        """Commit everything ready on ``branch`` (ingesting closed files first). Files still
        open stay staged."""
        for b, p in self.to_ingest():
            if b == branch:
                self.ingest(b, p)
        with self.lock:
            snapshot = {p: (s.gen, s) for p, s in self.items.get(branch, {}).items()
                        if not (s.kind == "file" and s.state != INGESTED)}
        if not snapshot:
            return None
        changes: dict[str, Optional[dict]] = {}
        for p, (_g, s) in snapshot.items():
            if s.kind in ("file", "entry"):
                changes[p] = s.entry
            elif s.kind == "delete":
                changes[p] = treemod.DELETE
            else:
                changes[p] = treemod.MKDIR
        head = self.repo.head(branch)
        if message is None:
            message = describe_changes(self.repo, self.repo.commit_obj(head).tree, changes)
        cid, _ = self.repo.commit_changes(branch, changes, message, self.author)
        with self.lock:
            items = self.items.get(branch, {})
            for p, (g, s) in snapshot.items():
                cur = items.get(p)
                if cur is not None and cur.gen == g:
                    items.pop(p)
                    if cur.kind == "file" and cur.writers == 0:
                        _unlink(cur.spool)
            self._save()
        if cid:
            log.info("committed %s to %s: %s", cid[:12], branch, message)
        return cid

    def commit_all(self) -> list[str]:
        out = []
        for b in list(self.pending()):
            try:
                cid = self.commit(b)
            except CorafsError:
                log.exception("commit of staged changes on %s failed", b)
                continue
            if cid:
                out.append(cid)
        return out

    # -- recovery ------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """After a crash: commit what was fully written, move what was still open to
        lost+found. Returns one line per file, for the log and `corafs status`."""
        if not os.path.exists(self.journal):
            return []
        with open(self.journal) as f:
            data = json.load(f)
        report = []
        lost = os.path.join(self.root, "lost+found")
        for branch, items in data.items():
            if branch not in self.repo.branches():
                report.append(f"branch {branch} no longer exists: {len(items)} staged change(s) "
                              f"kept in {lost}")
            for path, js in items.items():
                s = Staged(js["kind"], js.get("spool"), js.get("state", OPEN), 0,
                           js.get("entry"), self._next_gen())
                if s.kind == "file" and (s.state == OPEN or branch not in self.repo.branches()
                                         or not s.spool or not os.path.exists(s.spool)):
                    if s.spool and os.path.exists(s.spool):
                        dest = os.path.join(lost, branch, path)
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        shutil.move(s.spool, dest)
                        report.append(f"{branch}:{path} was still being written: kept as {dest}")
                    else:
                        report.append(f"{branch}:{path} was still being written and has no data")
                    continue
                if branch not in self.repo.branches():
                    continue
                self.items.setdefault(branch, {})[path] = s
                report.append(f"{branch}:{path} recovered ({s.kind})")
        self._save()
        for b in list(self.items):
            try:
                self.commit(b, message=f"Recover {len(self.items[b])} staged change(s) "
                                       "after an unclean unmount")
            except (CorafsError, OSError) as e:
                report.append(f"recovery commit on {b} failed: {e}")
        if report:
            with open(os.path.join(self.root, "recovered.log"), "a") as f:
                for line in report:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        return report


def _unlink(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def status_lines(repo_path: str) -> list[str]:
    """What `corafs status` shows: staged changes and files kept after a crash."""
    root = os.path.join(repo_path, "staging")
    out = []
    journal = os.path.join(root, "journal.json")
    if os.path.exists(journal):
        with open(journal) as f:
            data = json.load(f)
        for branch, items in sorted(data.items()):
            for path, js in sorted(items.items()):
                what = {"file": f"written ({js.get('state')})", "entry": "moved",
                        "delete": "deleted", "dir": "new directory"}.get(js["kind"], js["kind"])
                out.append(f"staged   {branch}:{path}  {what}")
    lost = os.path.join(root, "lost+found")
    if os.path.isdir(lost):
        for dirpath, _d, files in os.walk(lost):
            for fn in sorted(files):
                p = os.path.join(dirpath, fn)
                out.append(f"unsaved  {os.path.relpath(p, lost)}  (was being written when the "
                           f"mount stopped; kept at {p})")
    return out


__all__ = ["Staging", "Staged", "status_lines", "NotFound"]

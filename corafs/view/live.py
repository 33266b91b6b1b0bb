"""Live branch trees: what a branch directory of the mount *is*, as a real filesystem has it.

Every file, directory and symlink under a branch directory is one ``LiveNode`` with one inode
for as long as it exists, whatever happens to its name: a rename moves the node, a write
through any name of it lands in it, a commit keeps it, a directory keeps its inode across
commits (so a process whose cwd is inside a branch keeps a valid ``getcwd()``). A path is
found by walking parents at the time of an operation; nothing is keyed by path.

A directory is loaded lazily: until it is listed or a name in it is looked up it stands for a
committed tree (``origin``); once loaded it holds its children and the entries of ``origin``
(``base``) they were loaded from. The *rows* of a branch -- path -> what is there now, for
every place where the live tree differs from the committed one -- are derived from this tree:
they are what the journal stores and what a commit applies (``tree.apply`` semantics: a row
replaces the node at its path, deeper rows apply on top).

After a commit or a move of the branch by another writer, ``reconcile`` merges three ways by
path: ``old`` (what was last synchronised: the committed snapshot, or the previous head),
``new`` (the new head) and the live tree. Whatever changed locally since ``old`` stays; what
another writer changed, where nothing changed locally, is taken. So an unlink or a rename that
overlaps a commit is never undone.

No locking here: the caller (``Staging``) holds its lock around every call.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator, Optional

from ..core import tree as treemod
from ..core.objects import canonical, meta_id

EMPTY_TREE = meta_id(canonical(treemod.empty_tree()))
LIVE_TTL = 1.0
NAME_MAX = 255

# states of a staged (written, not yet committed) file
OPEN = "open"            # a writer holds it
CLOSED = "closed"        # last writer closed; not yet durable on disk
DURABLE = "durable"      # spool fsynced: a crash can commit it
INGESTED = "ingested"    # its objects are in the store: committable
FAILED = "failed"        # ingest failed: kept staged with the reason, never blocks the rest

DEFAULT_FILE_PERM = 0o644
DEFAULT_DIR_PERM = 0o755


SYNCING = object()


class Staged:
    """The data of a file written through the mount: a spool file on local disk."""

    __slots__ = ("spool", "state", "writers", "gen", "entry", "reason", "synced")

    def __init__(self, spool: str, state: str = OPEN, writers: int = 0, gen: int = 0,
                 entry: Optional[dict] = None, reason: Optional[str] = None):
        self.spool, self.state, self.writers, self.gen = spool, state, writers, gen
        self.entry, self.reason = entry, reason
        #: while still open: the stored entry of the content as of the last fsync (a write
        #: since clears it); SYNCING while that fsync is being stored
        self.synced: object = None

    @property
    def synced_entry(self) -> Optional[dict]:
        return self.synced if isinstance(self.synced, dict) else None

    @property
    def stored_entry(self) -> Optional[dict]:
        """The stored entry of the content as it is now: the ingested one, else the last
        fsync's (nothing written since), else None (not stored yet)."""
        return self.entry if self.state == INGESTED else self.synced_entry

    @property
    def busy(self) -> bool:
        """Not committable yet, but will be: it must hold back the branch's commit."""
        return self.state in (OPEN, CLOSED, DURABLE)


class LiveNode:
    """One node of a branch directory (see the module docstring)."""

    live = True
    immutable = False
    writable = True
    ttl = LIVE_TTL

    def __init__(self, inode: int, kind: str, branch: str, parent: Optional["LiveNode"],
                 name: str):
        self.inode, self.kind, self.branch, self.parent, self.name = \
            inode, kind, branch, parent, name
        self.children: Optional[dict[str, LiveNode]] = None    # dir: loaded children
        self.origin: str = EMPTY_TREE                          # dir: the tree it stands for
        self.base: Optional[dict] = None                       # dir: entries of origin
        self.entry: Optional[dict] = None                      # file: committed content
        self.staged: Optional[Staged] = None                   # file: written content
        self.target: bytes = b""                               # link
        self.perm = DEFAULT_DIR_PERM if kind == "dir" else DEFAULT_FILE_PERM
        self.mtime_ns: Optional[int] = None                    # explicit (written / utimens)
        self.default_mtime = 0                                 # commit time when not explicit
        self.commit: Optional[str] = None                      # head shown (xattr)

    # -- attributes --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        if self.kind == "file":
            if self.staged is not None:
                try:
                    return os.stat(self.staged.spool).st_size
                except OSError:
                    return 0
            return self.entry["size"] if self.entry else 0
        if self.kind == "link":
            return len(self.target)
        return 0

    @property
    def mode(self) -> int:
        if self.kind == "dir":
            return stat.S_IFDIR | self.perm
        if self.kind == "link":
            return stat.S_IFLNK | 0o777
        return stat.S_IFREG | self.perm

    @property
    def mtime(self) -> int:
        return self.mtime_ns if self.mtime_ns is not None else self.default_mtime

    @property
    def linked(self) -> bool:
        """Still reachable from its branch's root: false for a file unlinked (or replaced by
        a rename) while a process still has it open."""
        n = self
        while n.parent is not None:
            p = n.parent
            if p.children is None or p.children.get(n.name) is not n:
                return False
            n = p
        return True

    @property
    def nlink(self) -> int:
        if not self.linked:
            return 0                 # as on a local disk: fstat of an unlinked open file
        if self.kind != "dir":
            return 1
        if self.children is None:
            return 2 + sum(1 for e in (self.base or {}).values() if e.get("kind") == "dir")
        return 2 + sum(1 for c in self.children.values() if c.kind == "dir")

    def content_entry(self) -> Optional[dict]:
        """The tree entry this node is now, or None while its data is not ingested."""
        if self.kind == "link":
            e = {"kind": "link", "target": os.fsdecode(self.target)}
        elif self.kind == "file":
            src = self.entry if self.staged is None else self.staged.stored_entry
            if src is None:
                return None
            e = {k: v for k, v in src.items() if k not in ("mode", "mtime_ns")}
            if self.perm != DEFAULT_FILE_PERM:
                e["mode"] = self.perm
        else:
            raise ValueError("directories have no content entry")
        if self.mtime_ns is not None:
            e["mtime_ns"] = self.mtime_ns
        return e


def node_from_entry(inode: int, branch: str, parent: LiveNode, name: str, e: dict,
                    default_mtime: int) -> LiveNode:
    kind = e.get("kind")
    n = LiveNode(inode, "dir" if kind == "dir" else "link" if kind == "link" else "file",
                 branch, parent, name)
    n.default_mtime = default_mtime
    if n.kind == "dir":
        n.origin = e.get("id") or EMPTY_TREE
    elif n.kind == "link":
        n.target = os.fsencode(e.get("target", ""))
        n.mtime_ns = e.get("mtime_ns")
    else:
        n.entry = e
        n.perm = e.get("mode", DEFAULT_FILE_PERM) & 0o7777
        n.mtime_ns = e.get("mtime_ns")
    return n


def check_name(name: str) -> None:
    if name in (".", "..") or "/" in name or "\0" in name or not name:
        raise OSError(22, f"invalid name {name!r}")
    if len(os.fsencode(name)) > NAME_MAX:
        raise OSError(36, "File name too long")          # ENAMETOOLONG


class BranchTree:
    """The live tree of one branch: its root directory node and the commit it is based on."""

    def __init__(self, name: str, base: str, root: LiveNode):
        self.name, self.base, self.root = name, base, root
        self.committing = False


class Forest:
    """The live trees of all branches. ``alloc(node_factory)`` gives inode numbers; ``drop``
    is called for nodes that left the tree (the inode table decides when to free them)."""

    def __init__(self, repo, alloc, on_detach=None, on_committed=None):
        self.repo = repo
        self.alloc = alloc
        #: a node left the tree; a staged file's data became committed (its spool can go)
        self.on_detach = on_detach or (lambda n: None)
        self.on_committed = on_committed or (lambda n, s: None)
        self.trees: dict[str, BranchTree] = {}
        #: kernel invalidations owed: ("entry", parent inode, name) or ("inode", inode)
        self.invalidations: list[tuple] = []

    # -- building ----------------------------------------------------------------------------
    def tree(self, branch: str, head: Optional[str] = None) -> BranchTree:
        bt = self.trees.get(branch)
        if bt is None:
            head = head or self.repo.head(branch)
            c = self.repo.commit_obj(head)
            root = LiveNode(self.alloc(), "dir", branch, None, branch)
            root.origin = c.tree
            root.default_mtime = c.time_ns
            root.commit = head
            bt = self.trees[branch] = BranchTree(branch, head, root)
        return bt

    def load(self, d: LiveNode) -> dict[str, LiveNode]:
        if d.children is None:
            entries = self.repo.get_meta(d.origin)["entries"] if d.origin else {}
            d.base = dict(entries)
            d.children = {name: node_from_entry(self.alloc(), d.branch, d, name, e,
                                                d.default_mtime)
                          for name, e in entries.items()}
        return d.children

    def child(self, d: LiveNode, name: str) -> Optional[LiveNode]:
        return self.load(d).get(name)

    # -- paths -------------------------------------------------------------------------------
    def path(self, n: LiveNode) -> Optional[str]:
        """The node's path in its branch now ('' for the branch root), None if detached."""
        parts = []
        while n.parent is not None:
            p = n.parent
            if p.children is None or p.children.get(n.name) is not n:
                return None
            parts.append(n.name)
            n = p
        bt = self.trees.get(n.branch)
        if bt is None or bt.root is not n:
            return None
        return "/".join(reversed(parts))

    def attached(self, n: LiveNode) -> bool:
        return self.path(n) is not None

    def is_ancestor(self, a: LiveNode, b: LiveNode) -> bool:
        while b is not None:
            if b is a:
                return True
            b = b.parent
        return False

    # -- structure changes ---------------------------------------------------------------------
    def attach(self, d: LiveNode, name: str, n: LiveNode) -> None:
        self.load(d)[name] = n
        n.parent, n.name, n.branch = d, name, d.branch

    def detach(self, d: LiveNode, name: str) -> Optional[LiveNode]:
        n = self.load(d).pop(name, None)
        if n is not None:
            for x in self.subtree(n):
                self.on_detach(x)
        return n

    def subtree(self, n: LiveNode) -> Iterator[LiveNode]:
        yield n
        if n.kind == "dir" and n.children:
            for c in n.children.values():
                yield from self.subtree(c)

    # -- rows ----------------------------------------------------------------------------------
    def row_of(self, d: LiveNode, name: str, committable: bool) -> Optional[dict]:
        """What the row at ``name`` of loaded directory ``d`` is: None when the node there is
        what ``d.base`` says (or, committable, when its data is not ingested yet)."""
        b = d.base.get(name) if d.base else None
        c = d.children.get(name) if d.children is not None else None
        if c is None:
            return {"op": "delete"} if b is not None else None
        if c.kind == "dir":
            if b is not None and b.get("kind") == "dir" and b.get("id") == c.origin:
                return None
            if b is None and c.origin == EMPTY_TREE:
                return {"op": "mkdir"}
            return {"op": "entry", "entry": {"kind": "dir", "id": c.origin}}
        s = c.staged
        if s is not None and s.state != INGESTED and not committable:
            return {"op": "staged", "spool": s.spool, "state": s.state, "reason": s.reason,
                    "mode": c.perm, "mtime_ns": c.mtime_ns, "synced": s.synced_entry}
        e = c.content_entry()
        if e is None:
            return None
        if e == b:
            return None
        return {"op": "entry", "entry": e}

    def rows_at(self, d: LiveNode, name: str, path: str, committable: bool,
                out: dict) -> None:
        """Rows for ``name`` in ``d`` at ``path`` and, for a loaded directory, below it."""
        r = self.row_of(d, name, committable)
        if r is not None:
            out[path] = r
        c = d.children.get(name) if d.children is not None else None
        if c is not None and c.kind == "dir" and c.children is not None:
            for sub in set(c.children) | set(c.base or ()):
                self.rows_at(c, sub, f"{path}/{sub}", committable, out)

    def rows(self, branch: str, committable: bool) -> dict[str, dict]:
        bt = self.trees.get(branch)
        out: dict[str, dict] = {}
        if bt is None or bt.root.children is None:
            return out
        root = bt.root
        for name in set(root.children) | set(root.base or ()):
            self.rows_at(root, name, name, committable, out)
        return out

    def dirty(self, n: LiveNode) -> bool:
        """Whether a directory differs from what it was loaded from (anything below)."""
        if n.kind != "dir" or n.children is None:
            return False
        for name in set(n.children) | set(n.base or ()):
            if self.row_of(n, name, committable=False) is not None:
                return True
            c = n.children.get(name)
            if c is not None and self.dirty(c):
                return True
        return False

    # -- merging another writer's changes --------------------------------------------------------
    def reconcile(self, branch: str, old_tree: str, new_commit: str) -> None:
        """Move the branch's live tree from ``old_tree`` to the commit ``new_commit``, keeping
        every local change made since ``old_tree`` (see the module docstring)."""
        bt = self.trees.get(branch)
        if bt is None:
            return
        c = self.repo.commit_obj(new_commit)
        bt.base = new_commit
        root = bt.root
        root.commit = new_commit
        root.default_mtime = c.time_ns
        if root.children is None:
            root.origin = c.tree
            return
        self._reconcile_dir(root, old_tree, c.tree, c.time_ns, new_commit)

    def _entries(self, tid: Optional[str]) -> dict:
        return self.repo.get_meta(tid)["entries"] if tid else {}

    def _reconcile_dir(self, d: LiveNode, old_id: Optional[str], new_id: Optional[str],
                       mtime: int, cid: str) -> None:
        old, new = self._entries(old_id), self._entries(new_id)
        d.commit = cid
        d.default_mtime = mtime
        before = len(self.invalidations)
        for name in sorted(set(old) | set(new) | set(d.children)):
            c, o, nw = d.children.get(name), old.get(name), new.get(name)
            if c is None:
                if o is None and nw is not None:          # added by another writer
                    self.attach(d, name, node_from_entry(self.alloc(), d.branch, d, name,
                                                         nw, mtime))
                    self.invalidations.append(("entry", d.inode, name))
                continue                                  # else: removed here, stays so
            c.commit, c.default_mtime = cid, mtime
            if o is None:
                continue                                  # created here since: local
            if c.kind == "dir":
                if o.get("kind") != "dir":
                    continue                              # replaced here since: local
                if nw is not None and nw.get("kind") == "dir":
                    if c.children is not None:
                        self._reconcile_dir(c, o["id"], nw["id"], mtime, cid)
                    elif c.origin == o["id"]:
                        c.origin = nw["id"]
                        if nw["id"] != o["id"]:
                            self.invalidations.append(("inode", c.inode))
                    continue
                if c.origin == o["id"] and not self.dirty(c):
                    self._replace(d, name, nw, mtime)     # removed / replaced elsewhere
                continue
            if c.content_entry() != o:
                continue                                  # changed here since: local
            if nw != o:
                self._replace(d, name, nw, mtime)         # changed elsewhere
            elif c.staged is not None and c.staged.writers == 0:
                # committed now (ingested, or as of an fsync with nothing written since, the
                # file closed meanwhile): the same inode, its spool no longer needed
                s, c.staged = c.staged, None
                c.entry = dict(s.stored_entry)
                self.on_committed(c, s)
        d.base = dict(new)
        d.origin = new_id or EMPTY_TREE
        if any(x[0] == "entry" and x[1] == d.inode for x in self.invalidations[before:]):
            self.invalidations.append(("inode", d.inode))   # its listing changed

    def _replace(self, d: LiveNode, name: str, nw: Optional[dict], mtime: int) -> None:
        self.detach(d, name)
        if nw is not None:
            self.attach(d, name, node_from_entry(self.alloc(), d.branch, d, name, nw, mtime))
        self.invalidations.append(("entry", d.inode, name))

    def drop_branch(self, branch: str) -> Optional[BranchTree]:
        bt = self.trees.pop(branch, None)
        if bt is not None:
            for n in self.subtree(bt.root):
                self.on_detach(n)
        return bt


def rows_to_changes(rows: dict[str, dict]) -> dict[str, Optional[dict]]:
    out: dict[str, Optional[dict]] = {}
    for p, r in rows.items():
        if r["op"] == "entry":
            out[p] = r["entry"]
        elif r["op"] == "delete":
            out[p] = treemod.DELETE
        elif r["op"] == "mkdir":
            out[p] = treemod.MKDIR
    return out


__all__ = ["LiveNode", "Staged", "Forest", "BranchTree", "rows_to_changes", "check_name",
           "EMPTY_TREE", "OPEN", "CLOSED", "DURABLE", "INGESTED", "FAILED"]

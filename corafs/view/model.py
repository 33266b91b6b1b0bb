"""The mount tree as a pure model over a Repository: no pyfuse3 here (docs/mount.md).

::

    /                      branches (live, read-write), @tags, @commits, @history
    /<branch>/...          the branch head's tree
    /@tags/<tag>/...       the tagged commit's tree (immutable)
    /@commits/<id>/...     any commit (lookup also takes a unique prefix of >= 6 hex digits)
    /@history/<branch>/    NNNN-<date>-<id8> -> ../../@commits/<id>, oldest first
    /main~2/, /v1.0^/      not listed; lookup resolves git-style revisions

Branch directories are live trees (``corafs.view.live``): one node per file or directory, an
inode that follows it through renames and commits. Everything else is immutable: a node there is
identified by a *key* (view, commit, path), so the same committed file seen under ``@commits``
and under ``@tags`` are two nodes, never the branch's node. Inode numbers come from one counter
and are never reused while the mount runs; a kernel reference (lookup count) keeps a node in the
table, and a forgotten one is dropped from it (a live node stays in its tree).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import stat
import time
from typing import Optional

from ..core import tree as treemod
from ..core.revparse import is_hex_prefix
from ..errors import CorafsError, NotFound
from .live import LIVE_TTL
from .staging import Staging

ROOT_INODE = 1
SPECIAL = ("@tags", "@commits", "@history")

#: how long the kernel may cache entries and attributes (LIVE_TTL: of the live trees)
IMMUTABLE_TTL = 3600.0


@dataclasses.dataclass
class Node:
    inode: int
    key: tuple
    kind: str                         # "dir", "file" or "link"
    mtime_ns: int
    size: int = 0
    commit: Optional[str] = None      # the commit this node shows (xattr user.corafs.commit)
    entry: Optional[dict] = None      # tree entry (file: id/size/sha256; dir: id)
    immutable: bool = True
    writable: bool = False
    target: bytes = b""
    live = False
    nlink_dirs: int = 0

    @property
    def mtime(self) -> int:
        if self.kind == "file" and self.entry and self.entry.get("mtime_ns") is not None:
            return self.entry["mtime_ns"]
        return self.mtime_ns

    @property
    def nlink(self) -> int:
        return 2 + self.nlink_dirs if self.kind == "dir" else 1

    @property
    def mode(self) -> int:
        if self.kind == "dir":
            return stat.S_IFDIR | (0o755 if self.writable else 0o555)
        if self.kind == "link":
            return stat.S_IFLNK | 0o777
        perm = (self.entry or {}).get("mode", 0o644) & 0o555
        return stat.S_IFREG | perm

    @property
    def ttl(self) -> float:
        return IMMUTABLE_TTL if self.immutable else LIVE_TTL


class SpoolReader:
    """Reads a file that is staged (being written or not committed yet) from its spool. The
    descriptor stays valid after the spool is removed at commit time."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, offset: int, size: int, view: bool = False) -> bytes:
        return os.pread(self.fd, size, offset)

    def objects_for(self, offset: int, size: int) -> list:
        return []

    def read_cached(self, offset: int, size: int, view: bool = False) -> None:
        return None

    def close(self) -> None:
        os.close(self.fd)


def history_name(n: int, time_ns: int, cid: str) -> str:
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.timezone.utc)
    return f"{n:04d}-{t.strftime('%Y-%m-%dT%H.%M.%S')}-{cid[:8]}"


class MountView:
    """Thread-safe (one lock, shared with the staging area). ``refresh()`` re-reads refs and
    says what the kernel must forget."""

    def __init__(self, repo, staging: Optional[Staging] = None):
        self.repo = repo
        self.staging = staging if staging is not None else Staging(repo, None)
        self.forest = self.staging.forest
        self._lock = self.staging.lock
        self.nodes: dict[int, object] = {}
        self.keys: dict[tuple, int] = {}
        self.lookups: dict[int, int] = {}
        self.parents: dict[int, set[tuple[int, str]]] = {}   # immutable inode -> {(parent, name)}
        self._next_inode = ROOT_INODE
        self.started_ns = time.time_ns()
        self.branches, self.tags = repo.branches(), repo.tags()
        self._commits: Optional[set[str]] = None
        self._history: dict[str, tuple[str, list]] = {}
        self.staging.bind(self._alloc, self._detached)
        root = Node(ROOT_INODE, ("root",), "dir", self.started_ns, immutable=False,
                    writable=True)
        self.nodes[ROOT_INODE] = root
        self.keys[("root",)] = ROOT_INODE
        self.lookups[ROOT_INODE] = 1

    # -- inodes -------------------------------------------------------------------------------
    def _alloc(self) -> int:
        with self._lock:
            self._next_inode += 1
            return self._next_inode

    def _register(self, key: tuple, parent: int, name: str, **attrs) -> Node:
        with self._lock:
            ino = self.keys.get(key)
            node = self.nodes.get(ino) if ino is not None else None
            if node is None:
                node = Node(self._alloc(), key, **attrs)
                self.nodes[node.inode] = node
                self.keys[key] = node.inode
            else:   # live nodes of the root (special dirs) get fresh attributes
                for k, v in attrs.items():
                    setattr(node, k, v)
            self.parents.setdefault(node.inode, set()).add((parent, name))
            return node

    def _expose(self, node):
        self.nodes[node.inode] = node
        return node

    def _detached(self, node) -> None:
        """A live node left its tree: once the kernel holds no reference it is gone."""
        if self.lookups.get(node.inode, 0) <= 0:
            self.nodes.pop(node.inode, None)

    def node(self, inode: int):
        n = self.nodes.get(inode)
        if n is None:
            raise NotFound("inode", str(inode))
        return n

    def remember(self, node, n: int = 1) -> None:
        """The kernel now holds ``n`` more references (a lookup or a readdir entry)."""
        with self._lock:
            self.nodes[node.inode] = node
            if not node.live and node.inode != ROOT_INODE:
                self.keys.setdefault(node.key, node.inode)
            self.lookups[node.inode] = self.lookups.get(node.inode, 0) + n

    def forget(self, inode: int, n: int) -> None:
        with self._lock:
            left = self.lookups.get(inode, 0) - n
            if left > 0:
                self.lookups[inode] = left
                return
            self.lookups.pop(inode, None)
            if inode == ROOT_INODE:
                return
            node = self.nodes.pop(inode, None)
            if node is not None and not node.live:
                self.parents.pop(inode, None)
                if self.keys.get(node.key) == inode:
                    del self.keys[node.key]

    # -- the tree --------------------------------------------------------------------------------
    def lookup(self, parent: int, name: str):
        """Resolve one name and count it as a kernel reference (atomically)."""
        with self._lock:
            node = self._child(self.node(parent), name)
            self.remember(node)
            return node

    def lookup_cached(self, parent: int, name: str):
        """``lookup`` when it needs no store read (a loaded branch directory): the node, or
        NotFound; None when the answer needs I/O (call ``lookup`` in a thread then)."""
        with self._lock:
            d = self.nodes.get(parent)
            if d is None or not d.live or d.kind != "dir" or d.children is None:
                return None
            c = d.children.get(name)
            if c is None:
                raise NotFound("path", name)
            self.remember(c)
            return c

    def absent(self, parent: int, name: str) -> bool:
        """True when ``name`` is known not to exist in a loaded branch directory."""
        with self._lock:
            d = self.nodes.get(parent)
            return (d is not None and d.live and d.kind == "dir" and d.children is not None
                    and name not in d.children)

    def peek(self, parent: int, name: str):
        """Resolve one name without counting a reference (None if absent)."""
        with self._lock:
            try:
                return self._child(self.node(parent), name)
            except NotFound:
                return None

    def listdir(self, inode: int) -> list[tuple[str, object]]:
        """Children in a stable (sorted) order; not yet counted as references."""
        with self._lock:
            d = self.node(inode)
            if d.kind != "dir":
                raise CorafsError("not a directory")
            if d.live:
                return [(name, self._expose(c))
                        for name, c in sorted(self.forest.load(d).items())]
            return [(name, self._child(d, name)) for name in self._names(d)]

    def _names(self, d: Node) -> list[str]:
        k = d.key
        if k[0] == "root":
            return sorted(self.branches) + list(SPECIAL)
        if k[0] == "tags":
            return sorted(self.tags)
        if k[0] == "commits":
            return sorted(self._all_commits())
        if k[0] == "history":
            return sorted(self.branches)
        if k[0] == "hist":
            return [name for name, _ in self._history_of(k[1])]
        return sorted(self._tree_entries(d))

    def _child(self, d, name: str):
        if d.live:
            if d.kind != "dir":
                raise NotFound("path", name)
            c = self.forest.child(d, name)
            if c is None:
                raise NotFound("path", name)
            return self._expose(c)
        k = d.key
        if k[0] == "root":
            if name in self.branches:
                bt = self.forest.tree(name, self.branches[name])
                return self._expose(bt.root)
            if name in SPECIAL:
                kind = {"@tags": "tags", "@commits": "commits", "@history": "history"}[name]
                return self._register((kind,), ROOT_INODE, name, kind="dir",
                                      mtime_ns=self.started_ns, immutable=False)
            if "~" in name or "^" in name:
                cid = self._resolve(name)
                return self._commit_dir(f"rev:{name}", cid, "", ROOT_INODE, name, live=True)
            raise NotFound("path", name)
        if k[0] == "tags":
            if name not in self.tags:
                raise NotFound("tag", name)
            return self._commit_dir(f"tag:{name}", self.tags[name], "", d.inode, name, live=True)
        if k[0] == "commits":
            if name in self._all_commits():
                return self._commit_dir("commit", name, "", d.inode, name)
            if is_hex_prefix(name, 6):
                cid = self._resolve(name)
                return self._commit_dir(f"prefix:{name}", cid, "", d.inode, name)
            raise NotFound("commit", name)
        if k[0] == "history":
            if name not in self.branches:
                raise NotFound("branch", name)
            return self._register(("hist", name), d.inode, name, kind="dir",
                                  mtime_ns=self._head_time(name), immutable=False)
        if k[0] == "hist":
            for n, (cid, t) in self._history_of(k[1]):
                if n == name:
                    target = f"../../@commits/{cid}"
                    return self._register(("hlink", k[1], cid, name), d.inode, name, kind="link",
                                          mtime_ns=t, commit=cid, target=target.encode(),
                                          size=len(target))
            raise NotFound("history entry", name)
        # inside an immutable commit tree: ("cdir", view, cid, path)
        entries = self._tree_entries(d)
        if name not in entries:
            raise NotFound("path", name)
        e = entries[name]
        path = f"{k[3]}/{name}" if k[3] else name
        cid = d.commit
        if e["kind"] == "dir":
            return self._commit_dir(k[1], cid, path, d.inode, name)
        if e["kind"] == "link":
            target = e.get("target", "")
            return self._register(("link", k[1], cid, path), d.inode, name, kind="link",
                                  mtime_ns=e.get("mtime_ns") or d.mtime_ns, commit=cid,
                                  target=os.fsencode(target), size=len(os.fsencode(target)))
        return self._register(("file", k[1], cid, path), d.inode, name, kind="file",
                              mtime_ns=d.mtime_ns, size=e["size"], commit=cid, entry=e)

    def _tree_entries(self, d: Node) -> dict:
        e = d.entry
        if e is None or e["kind"] != "dir" or not e.get("id"):
            return {}
        return self.repo.get_meta(e["id"])["entries"]

    def _commit_dir(self, view: str, cid: str, path: str, parent: int, name: str,
                    live: bool = False) -> Node:
        c = self.repo.commit_obj(cid)
        entry = treemod.lookup(self.repo, c.tree, path)
        node = self._register(("cdir", view, cid, path), parent, name, kind="dir",
                              mtime_ns=c.time_ns, commit=cid, entry=entry,
                              immutable=not live or bool(path))
        if entry.get("kind") == "dir" and entry.get("id"):
            node.nlink_dirs = sum(1 for x in self.repo.get_meta(entry["id"])["entries"].values()
                                  if x.get("kind") == "dir")
        return node

    def _resolve(self, rev: str) -> str:
        try:
            return self.repo.resolve(rev)
        except CorafsError:
            raise NotFound("revision", rev) from None

    def _head_time(self, branch: str) -> int:
        return self.repo.commit_obj(self.branches[branch]).time_ns

    def _all_commits(self) -> set[str]:
        with self._lock:
            if self._commits is None:
                self._commits = self.repo.all_commits()
            return self._commits

    def _history_of(self, branch: str) -> list[tuple[str, tuple[str, int]]]:
        head = self.branches.get(branch)
        if head is None:
            return []
        with self._lock:
            cached = self._history.get(branch)
            if cached is not None and cached[0] == head:
                return cached[1]
        hist = self.repo.first_parent_history(head)
        rows = [(history_name(i + 1, c.time_ns, c.id), (c.id, c.time_ns))
                for i, c in enumerate(hist)]
        with self._lock:
            self._history[branch] = (head, rows)
        return rows

    # -- files -----------------------------------------------------------------------------------
    def open_reader(self, inode: int):
        """A reader pinned to the version this inode shows now."""
        with self._lock:
            n = self.node(inode)
            if n.kind != "file":
                raise CorafsError("not a file")
            if n.live:
                if n.staged is not None:
                    return SpoolReader(n.staged.spool)
                entry = n.entry
            else:
                entry = n.entry
        return self.repo.open_file(entry)

    def readlink(self, inode: int) -> bytes:
        return self.node(inode).target

    def xattrs(self, inode: int) -> dict[str, bytes]:
        with self._lock:
            n = self.node(inode)
            out = {}
            commit = n.commit
            if n.live:
                bt = self.forest.trees.get(n.branch)
                commit = bt.base if bt is not None else n.commit
            if commit:
                out["user.corafs.commit"] = commit.encode()
                if n.kind == "dir":             # what the run logged (corafs log --meta)
                    meta = dict(self.repo.commit_obj(commit).meta)
                    if n.live and self.staging is not None and \
                            self.staging.forest.path(n) == "":
                        meta.update(self.staging.pending_meta.get(n.branch, {}))
                    for k, v in meta.items():
                        out[f"user.corafs.meta.{k}"] = str(v).encode()
            if n.kind == "file":
                e = n.entry
                if n.live and n.staged is not None:
                    e = n.staged.entry if n.staged.state == "ingested" else None
                if e and "sha256" in e:
                    out["user.corafs.sha256"] = e["sha256"].encode()
            return out

    # -- refs moving -------------------------------------------------------------------------------
    def refresh(self) -> list[tuple]:
        """Re-read refs and merge moved branches into their live trees. Returns what the
        kernel must drop: ("entry", parent, name) for names whose meaning changed and
        ("inode", inode) for directories whose contents changed."""
        with self._lock:
            branches, tags = self.repo.branches(), self.repo.tags()
            out: list[tuple] = []
            if branches != self.branches or tags != self.tags:
                out += self._refresh_immutable(branches, tags)
            self.staging.refresh(branches)
            out += self.forest.invalidations
            self.forest.invalidations = []
            return out

    def _refresh_immutable(self, branches: dict, tags: dict) -> list[tuple]:
        moved = {b for b in set(branches) | set(self.branches)
                 if branches.get(b) != self.branches.get(b)}
        tags_moved = tags != self.tags
        out: list[tuple] = [("inode", ROOT_INODE)]
        for b in set(branches) ^ set(self.branches):
            out.append(("entry", ROOT_INODE, b))
        self.branches, self.tags = branches, tags
        self._commits = None

        def stale(k: tuple) -> bool:
            return (k[0] == "commits"
                    or (k[0] == "hist" and k[1] in moved)
                    or (k[0] == "tags" and tags_moved)
                    or (k[0] == "cdir" and k[1].startswith("rev:") and not k[3])
                    or (k[0] == "cdir" and k[1].startswith("tag:") and not k[3]
                        and tags_moved))

        children: dict[int, list[tuple[int, str]]] = {}
        for child, links in self.parents.items():
            for parent, name in links:
                children.setdefault(parent, []).append((child, name))
        for ino, node in list(self.nodes.items()):
            if node.live or not stale(node.key):
                continue
            out.append(("inode", ino))
            for child, name in children.get(ino, []):
                out.append(("entry", ino, name))
                self.parents.get(child, set()).discard((ino, name))
        # revision names (main~1) resolve anew: the kernel must look them up again
        for child, name in children.get(ROOT_INODE, []):
            if "~" in name or "^" in name:
                out.append(("entry", ROOT_INODE, name))
                self.parents.get(child, set()).discard((ROOT_INODE, name))
        return out

"""The mount tree as a pure model over a Repository: no pyfuse3 here (BRIEF section 2).

::

    /                      branches (live, read-write), @tags, @commits, @history
    /<branch>/...          the branch head's tree
    /@tags/<tag>/...       the tagged commit's tree (immutable)
    /@commits/<id>/...     any commit (lookup also takes a unique prefix of >= 6 hex digits)
    /@history/<branch>/    NNNN-<date>-<id8> -> ../../@commits/<id>, oldest first
    /main~2/, /v1.0^/      not listed; lookup resolves git-style revisions

Every node has a *key* describing what it is; its inode number is a hash of the key, so
numbers are stable across remounts. A file's key holds its commit and its content id, so when a
branch moves, its directory hands out new inodes for changed files while open handles keep the
old ones (and the kernel's page cache of one inode never mixes two versions).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import stat
import threading
import time
from typing import Optional

import xxhash

from ..core import tree as treemod
from ..core.revparse import is_hex_prefix
from ..errors import CorafsError, NotFound

ROOT_INODE = 1
SPECIAL = ("@tags", "@commits", "@history")

#: how long the kernel may cache entries and attributes
IMMUTABLE_TTL = 3600.0
LIVE_TTL = 1.0


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

    @property
    def mode(self) -> int:
        if self.kind == "dir":
            return stat.S_IFDIR | (0o755 if self.writable else 0o555)
        if self.kind == "link":
            return stat.S_IFLNK | 0o777
        return stat.S_IFREG | (0o644 if self.writable else 0o444)

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

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def objects_for(self, offset: int, size: int) -> list:
        return []

    def read_cached(self, offset: int, size: int) -> None:
        return None

    def close(self) -> None:
        os.close(self.fd)


def history_name(n: int, time_ns: int, cid: str) -> str:
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.timezone.utc)
    return f"{n:04d}-{t.strftime('%Y-%m-%dT%H.%M.%S')}-{cid[:8]}"


class MountView:
    """Thread-safe. ``refresh()`` re-reads refs and says what the kernel must forget."""

    def __init__(self, repo, staging=None):
        self.repo = repo
        self.staging = staging
        self._lock = threading.RLock()
        self.nodes: dict[int, Node] = {}
        self.keys: dict[tuple, int] = {}
        self.lookups: dict[int, int] = {}
        self.parents: dict[int, set[tuple[int, str]]] = {}   # inode -> {(parent, name)}
        self.started_ns = time.time_ns()
        self.branches, self.tags = repo.branches(), repo.tags()
        self._commits: Optional[set[str]] = None
        self._history: dict[str, tuple[str, list]] = {}
        root = Node(ROOT_INODE, ("root",), "dir", self.started_ns, immutable=False)
        self.nodes[ROOT_INODE] = root
        self.keys[("root",)] = ROOT_INODE
        self.lookups[ROOT_INODE] = 1

    # -- inodes -------------------------------------------------------------------------------
    def _register(self, key: tuple, parent: int, name: str, **attrs) -> Node:
        with self._lock:
            ino = self.keys.get(key)
            if ino is None:
                ino = xxhash.xxh3_64_intdigest(repr(key).encode()) & ((1 << 63) - 1)
                while ino <= ROOT_INODE or (ino in self.nodes and self.nodes[ino].key != key):
                    ino = (ino + 1) & ((1 << 63) - 1)
                self.keys[key] = ino
            node = self.nodes.get(ino)
            if node is None:
                node = Node(ino, key, **attrs)
                self.nodes[ino] = node
            else:   # live nodes (branch dirs) get fresh attributes
                for k, v in attrs.items():
                    setattr(node, k, v)
            self.parents.setdefault(ino, set()).add((parent, name))
            return node

    def node(self, inode: int) -> Node:
        n = self.nodes.get(inode)
        if n is None:
            raise NotFound("inode", str(inode))
        return n

    def remember(self, inode: int, n: int = 1) -> None:
        """The kernel now holds ``n`` more references (a lookup or a readdir entry)."""
        with self._lock:
            self.lookups[inode] = self.lookups.get(inode, 0) + n

    def forget(self, inode: int, n: int) -> None:
        with self._lock:
            left = self.lookups.get(inode, 0) - n
            if left > 0:
                self.lookups[inode] = left
                return
            self.lookups.pop(inode, None)
            if inode != ROOT_INODE:
                node = self.nodes.pop(inode, None)
                self.parents.pop(inode, None)
                if node is not None:
                    self.keys.pop(node.key, None)

    # -- the tree --------------------------------------------------------------------------------
    def lookup(self, parent: int, name: str) -> Node:
        """Resolve one name (counts as a kernel reference)."""
        node = self._child(self.node(parent), name)
        self.remember(node.inode)
        return node

    def listdir(self, inode: int) -> list[tuple[str, Node]]:
        """Children in a stable (sorted) order; not yet counted as references."""
        d = self.node(inode)
        if d.kind != "dir":
            raise CorafsError("not a directory")
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
        if k[0] == "bdir":
            return sorted(self._branch_entries(d))
        return sorted(self._tree_entries(d))

    def _child(self, d: Node, name: str) -> Node:
        k = d.key
        if k[0] == "root":
            if name in self.branches:
                return self._branch_dir(name, "", ROOT_INODE)
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
                    return self._register(("hlink", k[1], cid, name), d.inode, name, kind="link",
                                          mtime_ns=t, commit=cid,
                                          target=f"../../@commits/{cid}".encode(),
                                          size=len(f"../../@commits/{cid}"))
            raise NotFound("history entry", name)
        path = f"{k[-1]}/{name}" if k[-1] else name
        if k[0] == "bdir":
            entries = self._branch_entries(d)
            if name not in entries:
                raise NotFound("path", name)
            e = entries[name]
            if e.get("kind") == "staged":
                return self._staged_file(k[1], path, e["staged"], d)
        else:
            entries = self._tree_entries(d)
            if name not in entries:
                raise NotFound("path", name)
            e = entries[name]
        cid = d.commit
        if e["kind"] == "dir":
            if k[0] == "bdir":
                return self._branch_dir(k[1], path, d.inode)
            return self._commit_dir(k[1], cid, path, d.inode, name)
        return self._register(("file", cid, e["id"], path), d.inode, name, kind="file",
                              mtime_ns=d.mtime_ns, size=e["size"], commit=cid, entry=e,
                              writable=k[0] == "bdir")

    def _branch_entries(self, d: Node) -> dict:
        """A branch directory: the head's tree with this mount's staged changes on top."""
        entries = dict(self._tree_entries(d))
        if self.staging is None:
            return entries
        for name, st in self.staging.children(d.key[1], d.key[2]).items():
            if st is None or st.kind == "dir":
                if name not in entries or entries[name]["kind"] != "dir":
                    entries[name] = {"kind": "dir", "id": None}
            elif st.kind == "delete":
                entries.pop(name, None)
            elif st.kind == "entry":
                entries[name] = st.entry
            else:
                entries[name] = {"kind": "staged", "staged": st}
        return entries

    def _staged_file(self, branch: str, path: str, st, parent: Node) -> Node:
        try:
            size = os.stat(st.spool).st_size
        except OSError:
            size = 0
        return self._register(("staged", branch, path, st.gen), parent.inode,
                              path.rsplit("/", 1)[-1], kind="file", mtime_ns=time.time_ns(),
                              size=size, commit=parent.commit, entry={"staged": st.spool},
                              immutable=False, writable=True)

    def fresh(self, inode: int) -> Node:
        """A node with its attributes brought up to date (sizes of files being written)."""
        n = self.node(inode)
        if n.key[0] == "staged":
            try:
                st = os.stat(n.entry["staged"])
                n.size, n.mtime_ns = st.st_size, st.st_mtime_ns
            except OSError:
                pass
        return n

    def branch_path(self, inode: int) -> tuple[str, str]:
        """(branch, path) of a node inside a branch directory; CorafsError if not writable."""
        n = self.node(inode)
        k = n.key
        if k[0] == "bdir":
            return k[1], k[2]
        if k[0] in ("file", "staged") and n.writable:
            if k[0] == "staged":
                return k[1], k[2]
            return self._file_branch(n), k[3]
        raise CorafsError("read-only")

    def _file_branch(self, n: Node) -> str:
        with self._lock:
            for parent, _name in self.parents.get(n.inode, ()):
                p = self.nodes.get(parent)
                if p is not None and p.key[0] == "bdir":
                    return p.key[1]
        raise CorafsError("read-only")

    def head_entry(self, branch: str, path: str) -> Optional[dict]:
        """The committed entry at ``path`` of the branch head (None if absent)."""
        cid = self.branches.get(branch)
        if cid is None or not path:
            return None
        try:
            return self.repo.entry(cid, path)
        except (NotFound, CorafsError):
            return None

    def _tree_entries(self, d: Node) -> dict:
        if d.key[0] == "bdir":   # live: always the current head
            cid = self.branches.get(d.key[1])
            if cid is None:
                return {}
            try:
                e = self.repo.entry(cid, d.key[2])
            except (NotFound, CorafsError):
                return {}
            d.commit = cid
            d.mtime_ns = self.repo.commit_obj(cid).time_ns
        else:
            e = d.entry
        if e is None or e["kind"] != "dir" or not e.get("id"):
            return {}
        return self.repo.get_meta(e["id"])["entries"]

    def _branch_dir(self, branch: str, path: str, parent: int) -> Node:
        cid = self.branches[branch]
        return self._register(("bdir", branch, path), parent,
                              path.rsplit("/", 1)[-1] if path else branch, kind="dir",
                              mtime_ns=self.repo.commit_obj(cid).time_ns, commit=cid,
                              immutable=False, writable=True)

    def _commit_dir(self, view: str, cid: str, path: str, parent: int, name: str,
                    live: bool = False) -> Node:
        c = self.repo.commit_obj(cid)
        entry = treemod.lookup(self.repo, c.tree, path)
        return self._register(("cdir", view, cid, path), parent, name, kind="dir",
                              mtime_ns=c.time_ns, commit=cid, entry=entry,
                              immutable=not live or bool(path))

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
        """A reader pinned to the version this inode shows."""
        n = self.node(inode)
        if n.kind != "file":
            raise CorafsError("not a file")
        if "staged" in n.entry:
            return SpoolReader(n.entry["staged"])
        return self.repo.open_file(n.entry)

    def readlink(self, inode: int) -> bytes:
        return self.node(inode).target

    def xattrs(self, inode: int) -> dict[str, bytes]:
        n = self.node(inode)
        out = {}
        if n.key[0] == "bdir":
            self._tree_entries(n)
        if n.commit:
            out["user.corafs.commit"] = n.commit.encode()
        if n.kind == "file" and n.entry and "sha256" in n.entry:
            out["user.corafs.sha256"] = n.entry["sha256"].encode()
        return out

    # -- refs moving -------------------------------------------------------------------------------
    def refresh(self) -> list[tuple]:
        """Re-read refs. Returns what the kernel must drop: ("entry", parent, name) for names
        whose meaning changed and ("inode", inode) for directories whose contents changed."""
        branches, tags = self.repo.branches(), self.repo.tags()
        with self._lock:
            if branches == self.branches and tags == self.tags:
                return []
            moved = {b for b in set(branches) | set(self.branches)
                     if branches.get(b) != self.branches.get(b)}
            tags_moved = tags != self.tags
            self.branches, self.tags = branches, tags
            self._commits = None

            def stale(k: tuple) -> bool:
                return (k[0] in ("root", "commits")
                        or (k[0] in ("bdir", "hist") and k[1] in moved)
                        or (k[0] == "tags" and tags_moved)
                        or (k[0] == "cdir" and k[1].startswith("rev:") and not k[3])
                        or (k[0] == "cdir" and k[1].startswith("tag:") and not k[3]
                            and tags_moved))

            children: dict[int, list[tuple[int, str]]] = {}
            for child, links in self.parents.items():
                for parent, name in links:
                    children.setdefault(parent, []).append((child, name))
            out: list[tuple] = []
            for ino, node in list(self.nodes.items()):
                if not stale(node.key):
                    continue
                out.append(("inode", ino))
                for child, name in children.get(ino, []):
                    out.append(("entry", ino, name))
                    self.parents.get(child, set()).discard((ino, name))
            return out

"""The Repository: one core shared by the CLI, the mount and the Python API.

It knows objects, trees, commits, refs and revisions, and it commits changes atomically: all
objects are written and made durable first, then the branch ref is moved by compare-and-swap.
If the ref moved meanwhile, the change set (paths -> new entries) is re-applied onto the new
head and the swap retried, so concurrent writers never lose a commit."""
from __future__ import annotations

import collections
import dataclasses
import getpass
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

from .. import codecs
from ..config import DEFAULT, Tuning
from ..errors import (AmbiguousRevision, CorafsError, IngestCancelled, NotARepository,
                      NotFound, RefConflict, RefExists, RepositoryExists)
from ..store import LocalStore, ObjectStore
from ..store import faults, s3
from . import headfirst, maintenance, revparse, settings, tree
from .ingest import Ingestor, IngestResult
from .objects import (canonical, decode_meta, decode_tensor_manifest, encode_meta,
                      meta_id)
from .reader import BlockCache, Decoder, FileReader
from .simindex import SimIndex

CONFIG = "corafs.json"
FORMAT = 1
_log = logging.getLogger("corafs.repository")


@dataclasses.dataclass(frozen=True)
class Commit:
    id: str
    tree: str
    parents: tuple
    author: str
    message: str
    time_ns: int
    lossy: bool = False

    @property
    def time(self) -> float:
        return self.time_ns / 1e9


@dataclasses.dataclass
class CommitResult:
    commit: Optional[str]           # None if nothing changed
    files: list[tuple[str, IngestResult]]
    retries: int = 0


def state_dir(spec: str) -> str:
    """This machine's directory for a repository: the repository itself when it is local, a
    cache directory for an ``s3://`` one (mount staging, logs, caches live there)."""
    return s3.local_dir(spec) if s3.is_url(spec) else os.path.abspath(spec)


def _read_config(spec: str, path: str, store) -> dict:
    """A repository's corafs.json: from its bucket (``store``) for an ``s3://`` one, else from
    its directory. NotARepository where there is none."""
    if s3.is_url(spec):
        raw = store.get_config()
        if raw is None:
            raise NotARepository(spec)
        return json.loads(raw)
    cfg = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg):
        raise NotARepository(spec)
    with open(cfg) as f:
        return json.load(f)


class Repository:
    def __init__(self, path: str, tuning: Tuning = DEFAULT, store: Optional[ObjectStore] = None):
        #: where the repository is: a local directory, or an ``s3://bucket/prefix`` URL
        self.url = path if s3.is_url(path) else os.path.abspath(path)
        if s3.is_url(path):
            # a remote repository: objects and refs in the bucket; this machine's own state
            # (mount staging, caches, logs) in a local directory
            store = store if store is not None else s3.S3Store(path, tuning)
            self.path = store.local
        else:
            self.path = self.url
        try:
            self.config = _read_config(path, self.path, store)
        except (OSError, ValueError) as e:
            raise NotARepository(f"{path} ({e})") from None
        if self.config.get("format") != FORMAT:
            raise NotARepository(f"{path} (unsupported format {self.config.get('format')})")
        #: the caller's tuning with the repository's own encoding settings (corafs config)
        self._given_tuning = tuning
        self.tuning = tuning = settings.apply(tuning, self.config)
        self.store = faults.wrap(store if store is not None else LocalStore(self.path, tuning))
        self.cache = BlockCache(tuning.block_cache_bytes)
        self.decoder = Decoder(self.store, self.cache)
        self._meta: "collections.OrderedDict[str, dict]" = collections.OrderedDict()
        self._meta_lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self.simindex = SimIndex(self)
        #: head-first re-encoding after each commit: in a background thread (True), or left
        #: queued for ``reencode()`` / the next process (False; the CLI runs it itself)
        self.background_reencode = True
        self._reencoder = maintenance.Background(self)
        #: commit id -> tensor ids its tree holds (commits never change; head-first uses it)
        self.held_tensors_cache: dict[str, set[str]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    @staticmethod
    def check(path: str) -> None:
        """Raise NotARepository unless ``path`` holds a repository (cheap: reads no objects)."""
        if s3.is_url(path):
            Repository(path).close()
            return
        try:
            fmt = _read_config(path, path, None).get("format")
        except (OSError, ValueError):
            raise NotARepository(path) from None
        if fmt != FORMAT:
            raise NotARepository(f"{path} (unsupported format {fmt})")

    @classmethod
    def init(cls, path: str, default_branch: str = "main", author: Optional[str] = None,
             tuning: Tuning = DEFAULT, initial_commit: bool = True) -> "Repository":
        """A new repository; ``initial_commit=False`` leaves it without branches (a push or a
        clone fills it)."""
        revparse.check_ref_name(default_branch)
        cfg = {"format": FORMAT, "default_branch": default_branch, "author": author}
        if s3.is_url(path):
            store = s3.S3Store(path, tuning)
            store.check_conditional_writes()
            if not store.create_config(json.dumps(cfg, indent=2).encode()):
                raise RepositoryExists(path)
            repo = cls(path, tuning, store)
        else:
            if os.path.exists(os.path.join(path, CONFIG)):
                raise RepositoryExists(path)
            if os.path.isdir(path) and os.listdir(path):
                raise RepositoryExists(f"{path} (directory is not empty)")
            os.makedirs(path, exist_ok=True)
            LocalStore.create(path, tuning).close()
            with open(os.path.join(path, CONFIG), "w") as f:
                json.dump(cfg, f, indent=2)
            repo = cls(path, tuning)
        if not initial_commit:
            return repo
        with repo.store.claim():             # until the ref holds what the batch wrote
            with repo.store.writer() as w:
                tid = repo.put_meta(w, tree.empty_tree())
                cid = repo._put_commit(w, tid, [], "Initialize repository",
                                       repo.default_author())
            repo._move_ref(f"heads/{default_branch}", None, cid, "init")
        return repo

    def close(self) -> None:
        self._reencoder.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.tuning.workers, thread_name_prefix="corafs")
        return self._pool

    @property
    def default_branch(self) -> str:
        return self.config.get("default_branch", "main")

    def default_author(self) -> str:
        return (os.environ.get("CORAFS_AUTHOR") or self.config.get("author")
                or f"{getpass.getuser()}@{socket.gethostname()}")

    def refresh_settings(self) -> None:
        """Re-read corafs.json, so a setting another process changed (``corafs config`` while
        a mount runs) applies here from the next commit or re-encoding job on. A config that
        cannot be read or holds a bad value leaves the settings in force as they were."""
        try:
            cfg = _read_config(self.url, self.path, self.store)
            tuning = settings.apply(self._given_tuning, cfg)
        except (OSError, ValueError, CorafsError) as e:
            _log.warning("%s: keeping the settings in force: %s", CONFIG, e)
            return
        self.config, self.tuning = cfg, tuning

    def set_config(self, key: str, value) -> object:
        """Set a repository setting (``corafs.core.settings``; ``None`` unsets it) in
        corafs.json and return the value now in force. Encoding settings apply to what is
        encoded from now on, here and in every other process using the repository (each
        re-reads them at its next commit or re-encoding job); what is stored keeps its
        encoding."""
        settings.lookup(key)
        new = None if value is None else settings.check(key, value)

        def change(cfg: dict) -> dict:
            cfg = dict(cfg)
            if new is None:
                cfg.pop(key, None)
            else:
                cfg[key] = new
            return cfg

        if s3.is_url(self.url):
            self.config = self.store.update_config(change)
        else:
            from ..store.local import atomic_write
            cfg = change(_read_config(self.url, self.path, self.store))
            atomic_write(os.path.join(self.path, CONFIG), json.dumps(cfg, indent=2).encode())
            self.config = cfg
        self.tuning = settings.apply(self._given_tuning, self.config)
        return settings.value(self.config, key)

    # -- objects ----------------------------------------------------------------------------
    def put_meta(self, writer, obj: dict) -> str:
        canon = canonical(obj)
        oid = meta_id(canon)
        if not writer.has(oid) and not self.store.has(oid):
            writer.put(oid, encode_meta(canon, self.tuning.meta_zstd_level))
        return oid

    def get_meta(self, oid: str) -> dict:
        with self._meta_lock:
            obj = self._meta.get(oid)
            if obj is not None:
                self._meta.move_to_end(oid)
                return obj
        obj = decode_meta(oid, self.store.get(oid))
        with self._meta_lock:
            self._meta[oid] = obj
            while len(self._meta) > 8192:
                self._meta.popitem(last=False)
        return obj

    def put_tensor_manifest(self, writer, tid: str, manifest: dict) -> None:
        writer.put(tid, encode_meta(canonical(manifest), self.tuning.meta_zstd_level))

    def tensor_manifest(self, tid: str) -> dict:
        return decode_tensor_manifest(tid, self.store.get(tid))

    def block_header(self, oid: str) -> "codecs.BlockHeader":
        return codecs.parse_header(self.store.get_range(oid, 0, 600))

    def block_info(self, oid: str) -> tuple[str, int]:
        """(codec, delta depth) of a stored block, from its header alone."""
        h = self.block_header(oid)
        return h.codec, h.depth

    def chain_root(self, oid: str) -> str:
        """The keyframe at the bottom of a block's delta chain."""
        for _ in range(256):
            h = self.block_header(oid)
            if not h.base_ids:
                return oid
            oid = h.base_ids[0]
        raise CorafsError(f"delta chain of {oid} does not end")

    def reference_tensors(self, file_manifest: dict) -> dict[str, dict]:
        """Tensor manifests of a file version by tensor name: the default delta references."""
        out = {}
        for t in file_manifest.get("tensors", []):
            try:
                out[t["name"]] = dict(self.tensor_manifest(t["id"]), id=t["id"])
            except CorafsError:
                continue
        return out

    # -- refs -------------------------------------------------------------------------------
    def branches(self) -> dict[str, str]:
        return {k[len("heads/"):]: v for k, v in self.store.list_refs("heads/").items()}

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id (annotated tags peeled)."""
        return {k[len("tags/"):]: self._peel(v) for k, v in self.store.list_refs("tags/").items()}

    def tag_info(self, name: str) -> dict:
        oid = self.store.get_ref(f"tags/{name}")
        if oid is None:
            raise NotFound("tag", name)
        return self.get_meta(oid)

    def _peel(self, oid: str) -> str:
        obj = self.get_meta(oid)
        return obj["commit"] if obj.get("type") == "tag" else oid

    def head(self, branch: str) -> str:
        cid = self.store.get_ref(f"heads/{branch}")
        if cid is None:
            raise NotFound("branch", branch)
        return cid

    def create_branch(self, name: str, rev: Optional[str] = None) -> str:
        revparse.check_ref_name(name)
        cid = self.resolve(rev or self.default_branch)
        try:
            self._move_ref(f"heads/{name}", None, cid,
                           f"branch: created from {rev or self.default_branch}")
        except RefConflict:
            raise RefExists(f"branch {name}") from None
        return cid

    def delete_branch(self, name: str) -> None:
        if name == self.default_branch:
            raise CorafsError(f"cannot delete the default branch {name}")
        cid = self.head(name)
        self._move_ref(f"heads/{name}", cid, None, "branch: deleted")

    def reset_branch(self, name: str, rev: str) -> str:
        """Move branch ``name`` to ``rev`` whatever it points at now (creating it if needed):
        `corafs branch REPO NAME REV --force`. The old head stays in the reflog."""
        revparse.check_ref_name(name)
        cid = self.resolve(rev)
        for _ in range(20):
            cur = self.store.get_ref(f"heads/{name}")
            try:
                self._move_ref(f"heads/{name}", cur, cid, f"reset: moving to {rev}")
                return cid
            except RefConflict:
                continue
        raise RefConflict(f"heads/{name}", None, self.store.get_ref(f"heads/{name}"))

    def undelete_branch(self, name: str) -> str:
        """Recreate a deleted branch at the commit it pointed to when it was deleted."""
        for e in self.reflog(f"heads/{name}"):
            if e["new"] is None and e["old"]:
                try:
                    self._move_ref(f"heads/{name}", None, e["old"], "branch: undeleted")
                except RefConflict:
                    raise RefExists(f"branch {name}") from None
                return e["old"]
        raise NotFound("deleted branch in the reflog", name)

    # -- reflog ---------------------------------------------------------------------------------
    def _move_ref(self, ref: str, expected: Optional[str], new: Optional[str], action: str,
                  author: Optional[str] = None) -> None:
        """The one way refs move: compare-and-swap, then a reflog line."""
        self.store.cas_ref(ref, expected, new)
        prog = os.path.basename(sys.argv[0]) if sys.argv else "python"
        if prog in ("corafs", "__main__.py"):
            prog = "corafs"
        command = " ".join([prog, *sys.argv[1:]])[:300]
        line = json.dumps({"old": expected, "new": new, "time_ns": time.time_ns(),
                           "author": author or self.default_author(), "action": action[:300],
                           "command": command, "pid": os.getpid()}, sort_keys=True)
        try:
            self.store.append_reflog(ref, line)
        except (OSError, CorafsError):
            pass        # the move happened; a reflog line lost to a full disk is not damage

    def reflog(self, ref: str) -> list[dict]:
        """Moves of ``ref`` ("heads/main", "tags/v1"; a bare name means a branch), newest
        first: old, new, time_ns, author, action, command."""
        if "/" not in ref:
            ref = f"heads/{ref}"
        out = []
        for ln in self.store.read_reflog(ref):
            try:
                out.append(json.loads(ln))
            except ValueError:
                continue
        out.reverse()
        return out

    def reflog_roots(self, now_ns: Optional[int] = None,
                     expire_days: Optional[float] = None) -> set[str]:
        """Commits that reflog entries younger than ``expire_days`` (default:
        ``reflog_expire_days`` of corafs.json, 90) keep alive: gc must not remove them."""
        days = float(settings.value(self.config, "reflog_expire_days") if expire_days is None
                     else expire_days)
        cutoff = (now_ns or time.time_ns()) - int(days * 86400e9)
        out: set[str] = set()
        for ref in self.store.reflog_refs():
            for ln in self.store.read_reflog(ref):
                try:
                    e = json.loads(ln)
                except ValueError:
                    continue
                if e.get("time_ns", 0) >= cutoff:
                    for k in ("old", "new"):
                        oid = e.get(k)
                        if oid:
                            out.add(self._peel(oid) if ref.startswith("tags/") else oid)
        return out

    def create_tag(self, name: str, rev: Optional[str] = None, message: str = "") -> str:
        revparse.check_ref_name(name, "tag")
        cid = self.resolve(rev or self.default_branch)
        with self.store.claim():             # until the ref holds the tag object
            with self.store.writer() as w:
                oid = self.put_meta(w, {"type": "tag", "name": name, "commit": cid,
                                        "message": message, "tagger": self.default_author(),
                                        "time_ns": time.time_ns()})
            try:
                self._move_ref(f"tags/{name}", None, oid, f"tag: {rev or self.default_branch}")
            except RefConflict:
                raise RefExists(f"tag {name}") from None
        return cid

    def delete_tag(self, name: str) -> None:
        oid = self.store.get_ref(f"tags/{name}")
        if oid is None:
            raise NotFound("tag", name)
        self._move_ref(f"tags/{name}", oid, None, "tag: deleted")

    # -- commits and revisions ------------------------------------------------------------------
    def commit_obj(self, cid: str) -> Commit:
        o = self.get_meta(cid)
        if o.get("type") != "commit":
            raise NotFound("commit", cid)
        return Commit(cid, o["tree"], tuple(o["parents"]), o["author"], o["message"],
                      o["time_ns"], o.get("lossy", False))

    def _put_commit(self, writer, tree_id, parents, message, author, lossy=False) -> str:
        obj = {"type": "commit", "tree": tree_id, "parents": list(parents), "author": author,
               "message": message, "time_ns": time.time_ns()}
        if lossy:
            obj["lossy"] = True
        return self.put_meta(writer, obj)

    def all_commits(self) -> set[str]:
        """Every commit reachable from a branch or tag."""
        seen: set[str] = set()
        stack = list(self.branches().values()) + list(self.tags().values())
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            stack.extend(self.commit_obj(c).parents)
        return seen

    def resolve(self, rev: str) -> str:
        """A revision string to a full commit id (``main~2``, ``v1^``, ``main@{1}``: where
        main pointed one move ago, from the reflog)."""
        m = re.match(r"^(.+?)@\{(\d+)\}(.*)$", rev)
        if m:
            name, n, rest = m.group(1), int(m.group(2)), m.group(3)
            entries = self.reflog(name if "/" in name else f"heads/{name}")
            if n >= len(entries) or not entries[n].get("new"):
                raise NotFound("revision", rev)
            base_cid = entries[n]["new"]
            if name.startswith("tags/"):
                base_cid = self._peel(base_cid)
            return self.resolve(base_cid + rest) if rest else base_cid
        base, ops = revparse.split(rev)
        cid = self._resolve_name(base)
        for op, n in ops:
            if op == "~":
                for _ in range(n):
                    parents = self.commit_obj(cid).parents
                    if not parents:
                        raise NotFound("revision", rev)
                    cid = parents[0]
            else:
                parents = self.commit_obj(cid).parents
                if n == 0:
                    continue
                if len(parents) < n:
                    raise NotFound("revision", rev)
                cid = parents[n - 1]
        return cid

    def _resolve_name(self, name: str) -> str:
        if not revparse.is_hex_prefix(name):
            try:
                revparse.check_ref_name(name)      # never a path: '../../corafs.json'
            except CorafsError:
                raise NotFound("revision", name) from None
        cid = self.store.get_ref(f"heads/{name}")
        if cid is not None:
            return cid
        tag = self.store.get_ref(f"tags/{name}")
        if tag is not None:
            return self._peel(tag)
        if revparse.is_hex_prefix(name):
            if len(name) == 64 and self.store.has(name):
                return name
            matches = sorted(c for c in self.all_commits() if c.startswith(name))
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousRevision(name, matches)
        raise NotFound("revision", name)

    def log(self, rev: Optional[str] = None, limit: Optional[int] = None) -> list[Commit]:
        """Commits reachable from ``rev``, newest first."""
        start = self.resolve(rev or self.default_branch)
        out, seen = [], set()
        frontier = [self.commit_obj(start)]
        while frontier and (limit is None or len(out) < limit):
            frontier.sort(key=lambda c: c.time_ns)
            c = frontier.pop()
            if c.id in seen:
                continue
            seen.add(c.id)
            out.append(c)
            frontier.extend(self.commit_obj(p) for p in c.parents if p not in seen)
        return out

    def first_parent_history(self, rev: str) -> list[Commit]:
        """The first-parent chain of ``rev``, oldest first."""
        out = []
        cid: Optional[str] = self.resolve(rev)
        while cid is not None:
            c = self.commit_obj(cid)
            out.append(c)
            cid = c.parents[0] if c.parents else None
        out.reverse()
        return out

    def ancestors(self, cid: str) -> set[str]:
        seen: set[str] = set()
        stack = [cid]
        while stack:
            c = stack.pop()
            if c not in seen:
                seen.add(c)
                stack.extend(self.commit_obj(c).parents)
        return seen

    def is_ancestor(self, a: str, b: str) -> bool:
        return a in self.ancestors(b)

    def merge_bases(self, a: str, b: str) -> list[str]:
        """Every best common ancestor (more than one after criss-cross merges), newest
        first."""
        ca, cb = self.resolve(a), self.resolve(b)
        common = self.ancestors(ca) & self.ancestors(cb)
        best = set(common)
        for c in common:
            for p in self.commit_obj(c).parents:
                best -= self.ancestors(p)
        return sorted(best, key=lambda c: (self.commit_obj(c).time_ns, c), reverse=True)

    def merge_base(self, a: str, b: str) -> Optional[str]:
        """The newest best common ancestor (see ``merge_bases``)."""
        bases = self.merge_bases(a, b)
        return bases[0] if bases else None

    # -- trees and files ------------------------------------------------------------------------
    def entry(self, cid: str, path: str = "") -> dict:
        return tree.lookup(self, self.commit_obj(cid).tree, path)

    def resolve_path(self, spec: str) -> tuple[str, str, dict]:
        """``REV[:PATH]`` -> (commit id, path, entry)."""
        rev, path = revparse.split_path(spec)
        cid = self.resolve(rev)
        return cid, path, self.entry(cid, path)

    def listdir(self, cid: str, path: str = "") -> dict[str, dict]:
        e = self.entry(cid, path)
        if e["kind"] != "dir":
            raise CorafsError(f"not a directory: {path}")
        return self.get_meta(e["id"])["entries"]

    def walk(self, cid: str, path: str = "") -> Iterator[tuple[str, dict]]:
        e = self.entry(cid, path)
        if e["kind"] == "dir":
            yield from tree.walk(self, e["id"])
        else:
            yield os.path.basename(path), e

    def open_file(self, entry_or_id) -> FileReader:
        fid = entry_or_id["id"] if isinstance(entry_or_id, dict) else entry_or_id
        return FileReader(self.decoder, self.get_meta(fid))

    def open(self, spec: str):
        """``REV:PATH`` as a seekable read-only binary file object (decodes what is read)."""
        from .fileobj import open_file
        return open_file(self, spec)

    def load_tensors(self, spec: str, names=None, framework: str = "numpy") -> dict:
        """Chosen tensors of a stored checkpoint, decoding only their blocks."""
        from .fileobj import load_tensors
        return load_tensors(self, spec, names, framework)

    def merge(self, source: str, into: Optional[str] = None, strategy: str = "fail",
              alpha: float = 0.5, message: Optional[str] = None,
              author: Optional[str] = None):
        """Three-way merge of ``source`` into branch ``into`` (see ``corafs.core.merge``)."""
        from .merge import merge
        return merge(self, source, into, strategy, alpha, message, author)

    def save_state_dict(self, branch: str, name: str, state_dict, message: Optional[str] = None,
                        author: Optional[str] = None) -> "CommitResult":
        """Commit a torch state dict as ``name`` (``.safetensors`` or torch.save format)."""
        from .savestate import save_state_dict
        return save_state_dict(self, branch, name, state_dict, message, author)

    def read_file(self, spec: str) -> bytes:
        _, path, e = self.resolve_path(spec)
        if e["kind"] != "file":
            raise CorafsError(f"not a file: {spec}")
        r = self.open_file(e)
        return r.read(0, r.size)

    # -- writing --------------------------------------------------------------------------------
    def commit(self, branch: str, files: dict[str, str] | None = None,
               deletes: Iterable[str] = (), mkdirs: Iterable[str] = (),
               message: Optional[str] = None, author: Optional[str] = None,
               lossy: Optional[str] = None, parent: Optional[str] = None,
               on_progress: Optional[Callable[[int], None]] = None,
               entries: Optional[dict[str, dict]] = None,
               merge_parents: tuple = ()) -> CommitResult:
        """Commit local files (``dest path -> local path``), deletions and new directories to
        ``branch``. Returns the new commit (None when nothing changed)."""
        files = dict(files or {})
        if lossy is not None and lossy not in codecs.LOSSY_OPTIONS:
            raise CorafsError(f"unknown lossy codec {lossy!r} (choose from "
                              f"{', '.join(codecs.LOSSY_OPTIONS)})")
        head = parent or self.head(branch)
        head_tree = self.commit_obj(head).tree
        results: list[tuple[str, IngestResult]] = []
        changes: dict[str, Optional[dict]] = {}
        self.refresh_settings()
        w = self.store.writer()
        try:
            ing = Ingestor(self, w, self.pool, on_progress, lossy)
            ing.parent_tensors = _Lazy(lambda: self.tensors_by_name(head_tree))
            for dest, src in files.items():
                tree.split_path(dest)
                ref = self._previous_manifest(head_tree, dest)
                res = ing.ingest_path(src, os.path.basename(dest), ref)
                results.append((dest, res))
                changes[dest] = res.entry
            for dest, e in (entries or {}).items():
                changes[dest] = e
            for p in deletes:
                changes[p] = tree.DELETE
            for p in mkdirs:
                changes[p] = tree.MKDIR
            if message is None:
                message = describe_changes(self, head_tree, changes)
            used_lossy = any(r.manifest.get("lossy") for _, r in results)
            # the first attempt writes its tree and commit into the same pack as the data
            cid, retries = self.commit_changes(branch, changes, message, author, head,
                                               lossy=used_lossy, writer=w,
                                               merge_parents=merge_parents)
        except BaseException:
            w.abort()
            raise
        self.simindex.add(ing.fingerprints)   # objects are durable now
        return CommitResult(cid, results, retries)

    def ingest(self, src: str, dest: str, branch: str,
               on_progress: Optional[Callable[[int], None]] = None,
               cancel=None) -> IngestResult:
        """Ingest one local file as the next version of ``dest`` on ``branch`` (its previous
        version there is the delta reference). Objects are durable on return; nothing is
        committed: pass ``result.entry`` to ``commit_changes``."""
        (res,) = self.ingest_many([(src, dest)], branch, cancel, on_progress)
        if isinstance(res, BaseException):
            raise res
        return res

    def ingest_many(self, items: list[tuple[str, str]], branch: str, cancel=None,
                    on_progress: Optional[Callable[[int], None]] = None) -> list:
        """Ingest several local files (``(src, dest)``) as next versions on ``branch`` into one
        pack, durable on return. Returns, per item, its IngestResult or the exception that
        stopped that file alone (the others are stored anyway). Nothing is committed."""
        head_tree = self.commit_obj(self.head(branch)).tree
        self.refresh_settings()
        w = self.store.writer()
        out: list = []
        try:
            ing = Ingestor(self, w, self.pool, on_progress)
            ing.cancel = cancel
            ing.parent_tensors = _Lazy(lambda: self.tensors_by_name(head_tree))
            for src, dest in items:
                mark = len(ing.fingerprints)
                try:
                    tree.split_path(dest)
                    out.append(ing.ingest_path(src, os.path.basename(dest),
                                               self._previous_manifest(head_tree, dest)))
                except IngestCancelled:
                    raise
                except Exception as e:  # this file only
                    ing.abandon()
                    del ing.fingerprints[mark:]
                    out.append(e)
            w.commit()
        except BaseException:
            w.abort()
            raise
        self.simindex.add(ing.fingerprints)
        return out

    def commit_changes(self, branch: str, changes: dict[str, Optional[dict]], message: str,
                       author: Optional[str] = None, expected: Optional[str] = None,
                       lossy: bool = False, retries: int = 20,
                       writer=None, merge_parents: tuple = ()) -> tuple[Optional[str], int]:
        """Apply a change set on top of the branch head and move the ref by compare-and-swap,
        re-applying onto a new head if another writer got there first. ``writer``: an open
        batch (holding the files' data) that the first attempt completes and commits."""
        revparse.check_ref_name(branch)
        head = expected or self.head(branch)
        # the gc lock stays claimed until the ref holds what the batches wrote or reused
        with self.store.claim():
            for attempt in range(retries + 1):
                base_tree = self.commit_obj(head).tree
                w, writer = (writer or self.store.writer()), None
                with w:
                    new_tree = tree.apply(self, w, base_tree, changes)
                    cid = None
                    if new_tree != base_tree or merge_parents:
                        cid = self._put_commit(w, new_tree, [head, *merge_parents], message,
                                               author or self.default_author(), lossy)
                if cid is None:
                    return None, attempt
                try:
                    kind = "merge" if merge_parents else "commit"
                    self._move_ref(f"heads/{branch}", head, cid,
                                   f"{kind}: {message.splitlines()[0] if message else ''}",
                                   author)
                except RefConflict as e:
                    if e.actual is None:
                        raise NotFound("branch", branch) from None
                    head = e.actual
                    continue
                self._committed(cid)
                return cid, attempt
        raise RefConflict(f"heads/{branch}", head, self.store.get_ref(f"heads/{branch}"))

    def _committed(self, cid: str) -> None:
        """After a ref moved to a new commit: queue the re-encoding of what it replaced."""
        if not self.tuning.head_first:
            return
        headfirst.enqueue(self, cid)
        if self.background_reencode:
            self._reencoder.kick()

    def reencode(self, cancel=None, blocking: bool = True) -> "headfirst.ReencodeReport":
        """Run the queued head-first re-encoding now (what earlier commits replaced becomes
        reverse deltas), then rewrite packs of superseded encodings."""
        self._reencoder.wait()
        return maintenance.reencode(self, cancel=cancel, blocking=blocking)

    def reencode_in_background(self) -> None:
        """Start the background re-encoder if jobs are queued (a mount does at start)."""
        if headfirst.pending(self):
            self._reencoder.kick()

    @property
    def reencode_error(self) -> Optional[BaseException]:
        """Why the last background re-encoding run failed (None after one that did not)."""
        return self._reencoder.error

    def wait_reencode(self, timeout: Optional[float] = None) -> bool:
        """Until the background re-encoding started by this object's commits is done."""
        return self._reencoder.wait(timeout)

    # -- inspection -------------------------------------------------------------------------------
    def reencode_history(self, cancel=None) -> "headfirst.HistoryReport":
        """Re-encode the whole history with the current scheme (``corafs repack
        --reencode``): see ``maintenance.reencode_history``."""
        return maintenance.reencode_history(self, cancel)

    def fsck(self, on_progress=None, repair: bool = False):
        from .fsck import fsck
        return fsck(self, on_progress, repair)

    def repack(self, collect: bool = False, grace: Optional[float] = None,
               dry_run: bool = False, expire_reflog: Optional[float] = None, on_progress=None):
        """Rewrite packs: consolidate, drop duplicates and (``collect``) unreachable objects.
        ``grace`` (seconds): packs younger than this are left alone; None: none on a local
        repository (writers hold the gc lock until their objects are reachable), 15 minutes
        on one shared by machines."""
        return maintenance.repack(self, collect, grace, dry_run, expire_reflog, on_progress)

    def gc(self, grace: Optional[float] = None, dry_run: bool = False,
           expire_reflog: Optional[float] = None, on_progress=None):
        """``repack(collect=True)``: what no branch, tag, young reflog entry or staged change
        reaches is deleted and its space returned."""
        return self.repack(True, grace, dry_run, expire_reflog, on_progress)

    def diff(self, rev1: str, rev2: str, tensors: bool = True):
        from .diff import diff
        return diff(self, rev1, rev2, tensors)

    def stats(self):
        from .stats import stats
        return stats(self)

    def export(self, spec: str, dest: str, on_progress=None) -> list[str]:
        from .export import export
        return export(self, spec, dest, on_progress)

    def tensors_by_name(self, tree_id: str) -> dict[str, dict]:
        """Every stored tensor of every checkpoint in a tree, by tensor name."""
        out: dict[str, dict] = {}
        for _p, e in tree.walk(self, tree_id):
            if e["kind"] == "file" and e.get("format") != "opaque":
                for t in self.get_meta(e["id"]).get("tensors", []):
                    out.setdefault(t["name"], t)
        return out

    def _previous_manifest(self, tree_id: str, path: str) -> Optional[dict]:
        try:
            e = tree.lookup(self, tree_id, path)
        except (NotFound, CorafsError):
            return None
        return self.get_meta(e["id"]) if e["kind"] == "file" else None


class _Lazy:
    """Call ``fn`` once, on first use."""

    def __init__(self, fn):
        self.fn = fn
        self.value = None

    def __call__(self):
        if self.value is None:
            self.value = self.fn()
        return self.value


def describe_changes(repo, base_tree: str, changes: dict[str, Optional[dict]]) -> str:
    """A generated commit message: "Update model.pth", "Add 3 files", "Rename a to b"..."""
    added, updated, removed = {}, [], {}
    for path, e in changes.items():
        try:
            old = tree.lookup(repo, base_tree, path)
        except (NotFound, CorafsError):
            old = None
        if e is None:
            if old is not None:
                removed[path] = old.get("id")
        elif e.get("kind") == "dir" and "id" not in e:
            continue                                  # a new directory is not a file
        elif old is None:
            added[path] = e.get("id")
        elif old.get("id") != e.get("id"):
            updated.append(path)
    renamed = []
    for path, oid in list(added.items()):
        src = next((p for p, o in removed.items() if o == oid), None)
        if src is not None:
            renamed.append(f"{src} to {path}")
            del added[path]
            del removed[src]
    parts = []
    for verb, items in (("Add", list(added)), ("Update", updated), ("Rename", renamed),
                        ("Remove", list(removed))):
        if len(items) == 1:
            parts.append(f"{verb} {items[0]}")
        elif items:
            parts.append(f"{verb} {len(items)} files")
    return ", ".join(parts) or "Update directories"

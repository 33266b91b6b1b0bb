"""The Repository: one core shared by the CLI, the mount and the Python API.

It knows objects, trees, commits, refs and revisions, and it commits changes atomically: all
objects are written and made durable first, then the branch ref is moved by compare-and-swap.
If the ref moved meanwhile, the change set (paths -> new entries) is re-applied onto the new
head and the swap retried, so concurrent writers never lose a commit."""
from __future__ import annotations

import collections
import getpass
import json
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

from .. import codecs
from ..config import DEFAULT, Tuning
from ..errors import CorafsError, NotARepository, NotFound, RepositoryExists
from .. import store as stores
from ..store import ObjectStore, faults
from . import headfirst, history, maintenance, refs, revparse, settings, tree, writes
from .history import Commit
from .ingest import IngestResult
from .writes import CommitResult
from .objects import (canonical, decode_meta, decode_tensor_manifest, encode_meta,
                      meta_id)
from .reader import BlockCache, Decoder, FileReader
from .simindex import SimIndex

CONFIG = stores.CONFIG
#: repository formats this version reads: 1, and 2 (S3: refs, config and leases as
#: generations created if absent; stores say which they write, ``ObjectStore.layout_format``)
FORMATS = (1, 2)
_log = logging.getLogger("corafs.repository")
state_dir = stores.state_dir


def _parse_config(spec: str, raw: Optional[bytes]) -> dict:
    if raw is None:
        raise NotARepository(spec)
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise NotARepository(f"{spec} ({CONFIG}: {e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") not in FORMATS:
        fmt = cfg.get("format") if isinstance(cfg, dict) else None
        raise NotARepository(f"{spec} (unsupported format {fmt})")
    return cfg


class Repository:
    def __init__(self, path: str, tuning: Tuning = DEFAULT, store: Optional[ObjectStore] = None):
        #: where the repository is: a local directory, or an ``s3://bucket/prefix`` URL
        self.url = stores.location(path)
        #: this machine's directory for it (mount staging, caches, logs)
        self.path = stores.state_dir(path)
        store = store if store is not None else stores.open_store(self.url, tuning)
        try:
            self.config = _parse_config(path, store.get_config())
        except BaseException:
            store.close()
            raise
        #: the caller's tuning with the repository's own encoding settings (corafs config)
        self._given_tuning = tuning
        self.tuning = tuning = settings.apply(tuning, self.config)
        self.store = faults.wrap(store)
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
        _parse_config(path, stores.read_config(path))

    @classmethod
    def init(cls, path: str, default_branch: str = "main", author: Optional[str] = None,
             tuning: Tuning = DEFAULT, initial_commit: bool = True) -> "Repository":
        """A new repository; ``initial_commit=False`` leaves it without branches (a push or a
        clone fills it)."""
        revparse.check_ref_name(default_branch)
        store = stores.create_store(path, tuning)
        cfg = {"format": store.layout_format, "default_branch": default_branch,
               "author": author}
        if not store.create_config(json.dumps(cfg, indent=2).encode()):
            store.close()
            raise RepositoryExists(path)
        repo = cls(path, tuning, store)
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
            cfg = _parse_config(self.url, self.store.get_config())
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

        self.config = self.store.update_config(change)
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
        return refs.branches(self)

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id (annotated tags peeled)."""
        return refs.tags(self)

    def tag_info(self, name: str) -> dict:
        return refs.tag_info(self, name)

    def _peel(self, oid: str) -> str:
        return refs.peel(self, oid)

    def head(self, branch: str) -> str:
        return refs.head(self, branch)

    def create_branch(self, name: str, rev: Optional[str] = None) -> str:
        return refs.create_branch(self, name, rev)

    def delete_branch(self, name: str) -> None:
        return refs.delete_branch(self, name)

    def reset_branch(self, name: str, rev: str) -> str:
        """Move branch ``name`` to ``rev`` whatever it points at now (creating it if needed):
        `corafs branch REPO NAME REV --force`. The old head stays in the reflog."""
        return refs.reset_branch(self, name, rev)

    def undelete_branch(self, name: str) -> str:
        """Recreate a deleted branch at the commit it pointed to when it was deleted."""
        return refs.undelete_branch(self, name)

    # -- reflog ---------------------------------------------------------------------------------
    def _move_ref(self, ref: str, expected: Optional[str], new: Optional[str], action: str,
                  author: Optional[str] = None) -> None:
        """The one way refs move: compare-and-swap, then a reflog line."""
        return refs.move_ref(self, ref, expected, new, action, author)

    def reflog(self, ref: str) -> list[dict]:
        """Moves of ``ref`` ("heads/main", "tags/v1"; a bare name means a branch), newest
        first: old, new, time_ns, author, action, command."""
        return refs.reflog(self, ref)

    def reflog_roots(self, now_ns: Optional[int] = None,
                     expire_days: Optional[float] = None) -> set[str]:
        """Commits that reflog entries younger than ``expire_days`` (default:
        ``reflog_expire_days`` of corafs.json, 90) keep alive: gc must not remove them."""
        return refs.reflog_roots(self, now_ns, expire_days)

    def create_tag(self, name: str, rev: Optional[str] = None, message: str = "",
                   force: bool = False) -> str:
        return refs.create_tag(self, name, rev, message, force)

    def delete_tag(self, name: str) -> None:
        return refs.delete_tag(self, name)

    # -- commits and revisions ------------------------------------------------------------------
    def commit_obj(self, cid: str) -> Commit:
        return history.commit_obj(self, cid)

    def _put_commit(self, writer, tree_id, parents, message, author, lossy=False,
                    meta: Optional[dict] = None) -> str:
        return history.put_commit(self, writer, tree_id, parents, message, author, lossy, meta)

    def all_commits(self) -> set[str]:
        """Every commit reachable from a branch or tag."""
        return history.all_commits(self)

    def resolve(self, rev: str) -> str:
        """A revision string to a full commit id (``main~2``, ``v1^``, ``main@{1}``: where
        main pointed one move ago, from the reflog)."""
        return history.resolve(self, rev)

    def _resolve_name(self, name: str) -> str:
        return history.resolve_name(self, name)

    def log(self, rev: Optional[str] = None, limit: Optional[int] = None) -> list[Commit]:
        """Commits reachable from ``rev``, newest first."""
        return history.log(self, rev, limit)

    def first_parent_history(self, rev: str) -> list[Commit]:
        """The first-parent chain of ``rev``, oldest first."""
        return history.first_parent_history(self, rev)

    def commit_range(self, spec: Optional[str] = None) -> list[Commit]:
        """``BRANCH`` or ``A..B``: its commits along first parents, oldest first."""
        return history.commit_range(self, spec)

    def ancestors(self, cid: str) -> set[str]:
        return history.ancestors(self, cid)

    def is_ancestor(self, a: str, b: str) -> bool:
        return history.is_ancestor(self, a, b)

    def merge_bases(self, a: str, b: str) -> list[str]:
        """Every best common ancestor (more than one after criss-cross merges), newest
        first."""
        return history.merge_bases(self, a, b)

    def merge_base(self, a: str, b: str) -> Optional[str]:
        """The newest best common ancestor (see ``merge_bases``)."""
        return history.merge_base(self, a, b)

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
                        author: Optional[str] = None,
                        meta: Optional[dict] = None) -> "CommitResult":
        """Commit a torch state dict as ``name`` (``.safetensors`` or torch.save format), with
        ``meta`` (step, loss, ...) in the commit."""
        from .savestate import save_state_dict
        return save_state_dict(self, branch, name, state_dict, message, author, meta)

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
               merge_parents: tuple = (), meta: Optional[dict] = None) -> CommitResult:
        """Commit local files (``dest path -> local path``), deletions and new directories to
        ``branch``, with ``meta`` (numbers and short strings: step, loss, ...; see
        core.commitmeta) in the commit. Returns the new commit (None when nothing changed)."""
        return writes.commit(self, branch, files, deletes, mkdirs, message, author, lossy, parent,
                             on_progress, entries, merge_parents, meta)

    def ingest(self, src: str, dest: str, branch: str,
               on_progress: Optional[Callable[[int], None]] = None,
               cancel=None) -> IngestResult:
        """Ingest one local file as the next version of ``dest`` on ``branch`` (its previous
        version there is the delta reference). Objects are durable on return; nothing is
        committed: pass ``result.entry`` to ``commit_changes``."""
        return writes.ingest(self, src, dest, branch, on_progress, cancel)

    def ingest_many(self, items: list[tuple[str, str]], branch: str, cancel=None,
                    on_progress: Optional[Callable[[int], None]] = None) -> list:
        """Ingest several local files (``(src, dest)``) as next versions on ``branch`` into one
        pack, durable on return. Returns, per item, its IngestResult or the exception that
        stopped that file alone (the others are stored anyway). Nothing is committed."""
        return writes.ingest_many(self, items, branch, cancel, on_progress)

    def commit_changes(self, branch: str, changes: dict[str, Optional[dict]], message: str,
                       author: Optional[str] = None, expected: Optional[str] = None,
                       lossy: bool = False, retries: int = 20,
                       writer=None, merge_parents: tuple = (),
                       meta: Optional[dict] = None) -> tuple[Optional[str], int]:
        """Apply a change set on top of the branch head and move the ref by compare-and-swap,
        re-applying onto a new head if another writer got there first. ``writer``: an open
        batch (holding the files' data) that the first attempt completes and commits;
        ``meta``: what the run logged (core.commitmeta)."""
        return writes.commit_changes(self, branch, changes, message, author, expected, lossy,
                                     retries, writer, merge_parents, meta)

    def _committed(self, cid: str) -> None:
        """After a ref moved to a new commit: queue the re-encoding of what it replaced."""
        return writes.committed(self, cid)

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


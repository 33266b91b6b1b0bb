"""Committing to a Repository: files are ingested into one batch, then the branch ref is
moved by compare-and-swap; a commit that lost the race is re-applied onto the new head (its
change set is a list of paths), so concurrent writers never lose one."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Optional

from .. import codecs
from ..errors import CorafsError, IngestCancelled, NotFound, RefConflict
from . import commitmeta, headfirst, revparse, tree
from .ingest import Ingestor, IngestResult


@dataclasses.dataclass
class CommitResult:
    commit: Optional[str]           # None if nothing changed
    files: list[tuple[str, IngestResult]]
    retries: int = 0


def commit(repo, branch: str, files: Optional[dict[str, str]], deletes: Iterable[str],
           mkdirs: Iterable[str], message: Optional[str], author: Optional[str],
           lossy: Optional[str], parent: Optional[str],
           on_progress: Optional[Callable[[int], None]], entries: Optional[dict[str, dict]],
           merge_parents: tuple, meta: Optional[dict] = None) -> CommitResult:
    """``Repository.commit``: ingest into one batch, then ``commit_changes``."""
    files = dict(files or {})
    meta = commitmeta.check(meta)          # refused before anything is ingested
    if lossy is not None and lossy not in codecs.LOSSY_OPTIONS:
        raise CorafsError(f"unknown lossy codec {lossy!r} (choose from "
                          f"{', '.join(codecs.LOSSY_OPTIONS)})")
    head = parent or repo.head(branch)
    head_tree = repo.commit_obj(head).tree
    results: list[tuple[str, IngestResult]] = []
    changes: dict[str, Optional[dict]] = {}
    repo.refresh_settings()
    w = repo.store.writer()
    try:
        ing = Ingestor(repo, w, repo.pool, on_progress, lossy)
        ing.parent_tensors = _Lazy(lambda: repo.tensors_by_name(head_tree))
        for dest, src in files.items():
            tree.split_path(dest)
            ref = repo._previous_manifest(head_tree, dest)
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
            message = describe_changes(repo, head_tree, changes)
        used_lossy = any(r.manifest.get("lossy") for _, r in results)
        # the first attempt writes its tree and commit into the same pack as the data
        cid, retries = repo.commit_changes(branch, changes, message, author, head,
                                           lossy=used_lossy, writer=w,
                                           merge_parents=merge_parents, meta=meta)
    except BaseException:
        w.abort()
        raise
    repo.simindex.add(ing.fingerprints)   # objects are durable now
    return CommitResult(cid, results, retries)


def ingest(repo, src: str, dest: str, branch: str,
           on_progress: Optional[Callable[[int], None]] = None,
           cancel=None) -> IngestResult:
    """Ingest one local file as the next version of ``dest`` on ``branch`` (its previous
    version there is the delta reference). Objects are durable on return; nothing is
    committed: pass ``result.entry`` to ``commit_changes``."""
    (res,) = repo.ingest_many([(src, dest)], branch, cancel, on_progress)
    if isinstance(res, BaseException):
        raise res
    return res


def ingest_many(repo, items: list[tuple[str, str]], branch: str, cancel=None,
                on_progress: Optional[Callable[[int], None]] = None) -> list:
    """Ingest several local files (``(src, dest)``) as next versions on ``branch`` into one
    pack, durable on return. Returns, per item, its IngestResult or the exception that
    stopped that file alone (the others are stored anyway). Nothing is committed."""
    head_tree = repo.commit_obj(repo.head(branch)).tree
    repo.refresh_settings()
    w = repo.store.writer()
    out: list = []
    try:
        ing = Ingestor(repo, w, repo.pool, on_progress)
        ing.cancel = cancel
        ing.parent_tensors = _Lazy(lambda: repo.tensors_by_name(head_tree))
        for src, dest in items:
            mark = len(ing.fingerprints)
            try:
                tree.split_path(dest)
                out.append(ing.ingest_path(src, os.path.basename(dest),
                                           repo._previous_manifest(head_tree, dest)))
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
    repo.simindex.add(ing.fingerprints)
    return out


def commit_changes(repo, branch: str, changes: dict[str, Optional[dict]], message: str,
                   author: Optional[str] = None, expected: Optional[str] = None,
                   lossy: bool = False, retries: int = 20,
                   writer=None, merge_parents: tuple = (),
                   meta: Optional[dict] = None) -> tuple[Optional[str], int]:
    """Apply a change set on top of the branch head and move the ref by compare-and-swap,
    re-applying onto a new head if another writer got there first. ``writer``: an open
    batch (holding the files' data) that the first attempt completes and commits."""
    revparse.check_ref_name(branch)
    head = expected or repo.head(branch)
    # the gc lock stays claimed until the ref holds what the batches wrote or reused
    with repo.store.claim():
        for attempt in range(retries + 1):
            base_tree = repo.commit_obj(head).tree
            w, writer = (writer or repo.store.writer()), None
            with w:
                new_tree = tree.apply(repo, w, base_tree, changes)
                cid = None
                if new_tree != base_tree or merge_parents:
                    cid = repo._put_commit(w, new_tree, [head, *merge_parents], message,
                                           author or repo.default_author(), lossy, meta)
            if cid is None:
                return None, attempt
            try:
                kind = "merge" if merge_parents else "commit"
                repo._move_ref(f"heads/{branch}", head, cid,
                               f"{kind}: {message.splitlines()[0] if message else ''}",
                               author)
            except RefConflict as e:
                if e.actual is None:
                    raise NotFound("branch", branch) from None
                head = e.actual
                continue
            repo._committed(cid)
            return cid, attempt
    raise RefConflict(f"heads/{branch}", head, repo.store.get_ref(f"heads/{branch}"))


def committed(repo, cid: str) -> None:
    """After a ref moved to a new commit: queue the re-encoding of what it replaced."""
    if not repo.tuning.head_first:
        return
    headfirst.enqueue(repo, cid)
    if repo.background_reencode:
        repo._reencoder.kick()


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

"""Remotes: push, pull and clone between repositories (a local directory and an ``s3://`` URL,
or any two of either).

Only objects the other side lacks travel, and they travel as stored: a delta goes as a delta
(its bases with it unless the other side has them). The walk starts at the commits to send and
stops at anything the destination already has: a repository never holds an object without
everything it reaches (commits are written after their tree and data, deltas after their
bases, here too: objects are sent children first). Objects land in packs that are durable
before the ref moves, so an interrupted transfer leaves complete packs behind and the next run
skips what they hold (content-addressed uploads are idempotent): resumable.

The destination ref moves by compare-and-swap against the head read when the transfer started
(force-with-lease): a non-fast-forward move is refused unless forced, and a ref another writer
moved meanwhile is never overwritten.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterable, Optional

from ..errors import CorafsError, NotFound, RefConflict
from . import revparse


@dataclasses.dataclass
class TransferReport:
    objects: int = 0
    bytes: int = 0           # payload bytes sent (as stored: deltas as deltas)
    skipped: int = 0         # objects the destination had already
    ref: Optional[str] = None
    old: Optional[str] = None
    new: Optional[str] = None
    up_to_date: bool = False


# -- remote names (kept with the local repository) ------------------------------------------------
def _remotes_path(repo) -> str:
    return os.path.join(repo.path, "remotes.json")


def remotes(repo) -> dict[str, str]:
    try:
        with open(_remotes_path(repo)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _save(repo, d: dict) -> None:
    from ..store.fsutil import atomic_write
    atomic_write(_remotes_path(repo), json.dumps(d, indent=2, sort_keys=True).encode())


def add_remote(repo, name: str, url: str) -> None:
    revparse.check_ref_name(name)
    d = remotes(repo)
    if name in d:
        raise CorafsError(f"remote {name} already exists ({d[name]})")
    d[name] = url
    _save(repo, d)


def remove_remote(repo, name: str) -> None:
    d = remotes(repo)
    if d.pop(name, None) is None:
        raise NotFound("remote", name)
    _save(repo, d)


def url_of(repo, name: str) -> str:
    d = remotes(repo)
    if name in d:
        return d[name]
    raise NotFound("remote", name)


# -- transfer -------------------------------------------------------------------------------------
def transfer(src, dst, roots: Iterable[str], on_progress: Optional[Callable[[int], None]] = None,
             report: Optional[TransferReport] = None) -> TransferReport:
    """Copy into ``dst`` every object reachable from ``roots`` in ``src`` that ``dst`` lacks,
    as stored. Durable in ``dst`` on return (no ref is moved here).

    Objects are written children first (a delta after its bases, a commit after its tree and
    data): a batch interrupted after some packs were sealed leaves nothing in ``dst`` whose
    dependencies are missing, which is what lets the next transfer stop at what ``dst`` has."""
    from .gc import _children
    rep = report or TransferReport()
    progress = on_progress or (lambda n: None)
    seen: set[str] = set()
    # depth first; each object is fetched once, its children read from the payload, and it
    # is written when they are done (the stack holds the payloads of one path only)
    stack: list[tuple[str, object]] = [(r, None) for r in roots if r]
    w = dst.store.writer()
    try:
        while stack:
            oid, payload = stack.pop()
            if payload is not None:                 # its children are in: write it
                w.put(oid, payload)
                n = len(memoryview(payload))
                rep.objects += 1
                rep.bytes += n
                progress(n)
                continue
            if oid in seen:
                continue
            seen.add(oid)
            if dst.store.has(oid):
                rep.skipped += 1
                continue
            payload = src.store.get(oid)
            stack.append((oid, payload))
            stack.extend((c, None) for c in _children(src, oid, payload) if c not in seen)
        w.commit()
    except BaseException:
        w.abort()
        raise
    return rep


def _move(src_repo, dst, ref: str, new: str, force: bool, lease: Optional[str],
          rep: TransferReport) -> None:
    """Move ``dst``'s ``ref`` from ``lease`` to ``new`` (which ``dst`` now holds)."""
    rep.ref, rep.old, rep.new = ref, lease, new
    if lease == new:
        rep.up_to_date = True
        return
    if lease is not None and not force:
        # fast-forward only: the old head must be in the new one's history
        if not dst.is_ancestor(lease, new):
            raise CorafsError(
                f"{ref[len('heads/'):]} has diverged ({lease[:12]} is not an ancestor of "
                f"{new[:12]}): pull and merge first, or --force to overwrite")
    try:
        dst._move_ref(ref, lease, new, "push" if src_repo is not dst else "pull")
    except RefConflict as e:
        raise CorafsError(f"{ref} moved on the other side while transferring (now "
                          f"{(e.actual or 'deleted')[:12]}): nothing was overwritten; "
                          "run again") from None


def push(repo, url: str, branch: Optional[str] = None, force: bool = False,
         on_progress=None) -> TransferReport:
    from .repository import Repository
    from ..errors import NotARepository
    branch = branch or repo.default_branch
    head = repo.head(branch)
    try:
        dst = Repository(url)
    except NotARepository:
        # pushing to a new place creates the repository there (with no branch of its own)
        dst = Repository.init(url, repo.default_branch, repo.config.get("author"),
                              initial_commit=False)
    with dst:
        dst.background_reencode = False
        lease = dst.store.get_ref(f"heads/{branch}")
        with dst.store.claim():              # until the ref holds what was copied
            rep = transfer(repo, dst, [head], on_progress)
            _move(repo, dst, f"heads/{branch}", head, force, lease, rep)
    return rep


def pull(repo, url: str, branch: Optional[str] = None, into: Optional[str] = None,
         force: bool = False, on_progress=None) -> TransferReport:
    from .repository import Repository
    with Repository(url) as src:
        branch = branch or src.default_branch
        head = src.head(branch)
        into = into or branch
        revparse.check_ref_name(into)
        lease = repo.store.get_ref(f"heads/{into}")
        with repo.store.claim():             # until the ref holds what was copied
            rep = transfer(src, repo, [head], on_progress)
            _move(repo, repo, f"heads/{into}", head, force, lease, rep)
    return rep


def clone(url: str, dest: str, on_progress=None) -> tuple["object", TransferReport]:
    """A new local repository at ``dest`` with every branch and tag of ``url``; the remote
    is named ``origin``."""
    from .repository import Repository
    rep = TransferReport()
    with Repository(url) as src:
        repo = Repository.init(dest, src.default_branch, src.config.get("author"),
                               initial_commit=False)
        try:
            repo.background_reencode = False
            heads = src.store.list_refs("heads/")
            tags = src.store.list_refs("tags/")
            with repo.store.claim():         # until the refs hold what was copied
                transfer(src, repo, list(heads.values()) + list(tags.values()), on_progress,
                         rep)
                for ref, oid in sorted({**heads, **tags}.items()):
                    old = repo.store.get_ref(ref)
                    repo._move_ref(ref, old, oid, f"clone: from {url}")
            add_remote(repo, "origin", url)
        except BaseException:
            repo.close()
            raise
    return repo, rep


def refetch(repo, problems, on_note=None) -> list[str]:
    """``fsck --repair``: fetch the objects that fsck named as missing or corrupt from the
    remotes that have them, as stored, into a new pack (the newest copy is the one read). Only
    ids named in the problems travel; the caller checks again afterwards."""
    import re
    from .repository import Repository
    wanted = []
    for what, problem in problems:
        for oid in re.findall(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{32}\b", f"{what} {problem}"):
            if oid not in wanted:
                wanted.append(oid)
    fetched: list[str] = []
    if not wanted:
        return fetched
    for name, url in sorted(remotes(repo).items()):
        left = [o for o in wanted if o not in fetched]
        if not left:
            break
        try:
            src = Repository(url)
        except CorafsError as e:
            if on_note:
                on_note(f"remote {name} not readable: {e}")
            continue
        with src:
            w = repo.store.writer()
            try:
                for oid in left:
                    try:
                        payload = src.store.get(oid)
                    except CorafsError:
                        continue
                    w.put(oid, payload)
                    fetched.append(oid)
                w.commit()
            except BaseException:
                w.abort()
                raise
        if on_note and fetched:
            on_note(f"fetched {len(fetched)} object(s) from remote {name}")
    return fetched

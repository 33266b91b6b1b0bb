"""Branches, tags and the reflog of a Repository: ref moves by compare-and-swap, each
recorded with its time, author and command; deleted branches come back from the reflog."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from ..errors import CorafsError, NotFound, RefConflict, RefExists
from . import revparse, settings


def branches(repo) -> dict[str, str]:
    return {k[len("heads/"):]: v for k, v in repo.store.list_refs("heads/").items()}


def tags(repo) -> dict[str, str]:
    """Tag name -> commit id (annotated tags peeled)."""
    return {k[len("tags/"):]: repo._peel(v) for k, v in repo.store.list_refs("tags/").items()}


def tag_info(repo, name: str) -> dict:
    oid = repo.store.get_ref(f"tags/{name}")
    if oid is None:
        raise NotFound("tag", name)
    return repo.get_meta(oid)


def peel(repo, oid: str) -> str:
    obj = repo.get_meta(oid)
    return obj["commit"] if obj.get("type") == "tag" else oid


def head(repo, branch: str) -> str:
    cid = repo.store.get_ref(f"heads/{branch}")
    if cid is None:
        raise NotFound("branch", branch)
    return cid


def create_branch(repo, name: str, rev: Optional[str] = None) -> str:
    revparse.check_ref_name(name)
    cid = repo.resolve(rev or repo.default_branch)
    try:
        repo._move_ref(f"heads/{name}", None, cid,
                       f"branch: created from {rev or repo.default_branch}")
    except RefConflict:
        raise RefExists(f"branch {name}") from None
    return cid


def delete_branch(repo, name: str) -> None:
    if name == repo.default_branch:
        raise CorafsError(f"cannot delete the default branch {name}")
    cid = repo.head(name)
    repo._move_ref(f"heads/{name}", cid, None, "branch: deleted")


def reset_branch(repo, name: str, rev: str) -> str:
    """Move branch ``name`` to ``rev`` whatever it points at now (creating it if needed):
    `corafs branch REPO NAME REV --force`. The old head stays in the reflog."""
    revparse.check_ref_name(name)
    cid = repo.resolve(rev)
    for _ in range(20):
        cur = repo.store.get_ref(f"heads/{name}")
        try:
            repo._move_ref(f"heads/{name}", cur, cid, f"reset: moving to {rev}")
            return cid
        except RefConflict:
            continue
    raise RefConflict(f"heads/{name}", None, repo.store.get_ref(f"heads/{name}"))


def undelete_branch(repo, name: str) -> str:
    """Recreate a deleted branch at the commit it pointed to when it was deleted."""
    for e in repo.reflog(f"heads/{name}"):
        if e["new"] is None and e["old"]:
            try:
                repo._move_ref(f"heads/{name}", None, e["old"], "branch: undeleted")
            except RefConflict:
                raise RefExists(f"branch {name}") from None
            return e["old"]
    raise NotFound("deleted branch in the reflog", name)


def move_ref(repo, ref: str, expected: Optional[str], new: Optional[str], action: str,
              author: Optional[str] = None) -> None:
    """The one way refs move: compare-and-swap, then a reflog line."""
    repo.store.cas_ref(ref, expected, new)
    prog = os.path.basename(sys.argv[0]) if sys.argv else "python"
    if prog in ("corafs", "__main__.py"):
        prog = "corafs"
    command = " ".join([prog, *sys.argv[1:]])[:300]
    line = json.dumps({"old": expected, "new": new, "time_ns": time.time_ns(),
                       "author": author or repo.default_author(), "action": action[:300],
                       "command": command, "pid": os.getpid()}, sort_keys=True)
    try:
        repo.store.append_reflog(ref, line)
    except (OSError, CorafsError):
        pass        # the move happened; a reflog line lost to a full disk is not damage


def reflog(repo, ref: str) -> list[dict]:
    """Moves of ``ref`` ("heads/main", "tags/v1"; a bare name means a branch), newest
    first: old, new, time_ns, author, action, command."""
    if "/" not in ref:
        ref = f"heads/{ref}"
    out = []
    for ln in repo.store.read_reflog(ref):
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    out.reverse()
    return out


def ref_roots(repo) -> list[str]:
    """What the branches and tags point at (tags at their tag objects)."""
    return [oid for prefix in ("heads/", "tags/")
            for oid in repo.store.list_refs(prefix).values()]


def reflog_roots(repo, now_ns: Optional[int] = None,
                 expire_days: Optional[float] = None) -> set[str]:
    """Commits that reflog entries younger than ``expire_days`` (default:
    ``reflog_expire_days`` of corafs.json, 90) keep alive: gc must not remove them."""
    days = float(settings.value(repo.config, "reflog_expire_days") if expire_days is None
                 else expire_days)
    cutoff = (now_ns or time.time_ns()) - int(days * 86400e9)
    out: set[str] = set()
    for ref in repo.store.reflog_refs():
        for ln in repo.store.read_reflog(ref):
            try:
                e = json.loads(ln)
            except ValueError:
                continue
            if e.get("time_ns", 0) >= cutoff:
                for k in ("old", "new"):
                    oid = e.get(k)
                    if oid:
                        out.add(repo._peel(oid) if ref.startswith("tags/") else oid)
    return out


def create_tag(repo, name: str, rev: Optional[str] = None, message: str = "",
               force: bool = False) -> str:
    """Tag ``rev``; with ``force`` an existing tag is moved in one compare-and-swap (the
    reflog keeps where it was)."""
    revparse.check_ref_name(name, "tag")
    cid = repo.resolve(rev or repo.default_branch)
    old = repo.store.get_ref(f"tags/{name}") if force else None
    with repo.store.claim():             # until the ref holds the tag object
        with repo.store.writer() as w:
            oid = repo.put_meta(w, {"type": "tag", "name": name, "commit": cid,
                                    "message": message, "tagger": repo.default_author(),
                                    "time_ns": time.time_ns()})
        try:
            repo._move_ref(f"tags/{name}", old, oid, f"tag: {rev or repo.default_branch}")
        except RefConflict:
            raise RefExists(f"tag {name}") from None
    return cid


def delete_tag(repo, name: str) -> None:
    oid = repo.store.get_ref(f"tags/{name}")
    if oid is None:
        raise NotFound("tag", name)
    repo._move_ref(f"tags/{name}", oid, None, "tag: deleted")

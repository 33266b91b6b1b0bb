"""Commits and revisions of a Repository: commit objects, revision syntax (``main~2``,
``v1^``, id prefixes), logs, ancestry and merge bases."""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Optional

from ..errors import AmbiguousRevision, CorafsError, NotFound
from . import commitmeta, revparse


@dataclasses.dataclass(frozen=True)
class Commit:
    id: str
    tree: str
    parents: tuple
    author: str
    message: str
    time_ns: int
    lossy: bool = False
    #: what the run logged (core.commitmeta): step, loss, ... ({} for older commits)
    meta: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def time(self) -> float:
        return self.time_ns / 1e9


def commit_obj(repo, cid: str) -> Commit:
    o = repo.get_meta(cid)
    if o.get("type") != "commit":
        raise NotFound("commit", cid)
    return Commit(cid, o["tree"], tuple(o["parents"]), o["author"], o["message"],
                  o["time_ns"], o.get("lossy", False), dict(o.get("meta") or {}))


def put_commit(repo, writer, tree_id, parents, message, author, lossy=False,
               meta: Optional[dict] = None) -> str:
    obj = {"type": "commit", "tree": tree_id, "parents": list(parents), "author": author,
           "message": message, "time_ns": time.time_ns()}
    if lossy:
        obj["lossy"] = True
    if meta:
        obj["meta"] = commitmeta.check(meta)
    return repo.put_meta(writer, obj)


def all_commits(repo) -> set[str]:
    """Every commit reachable from a branch or tag."""
    seen: set[str] = set()
    stack = list(repo.branches().values()) + list(repo.tags().values())
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        stack.extend(repo.commit_obj(c).parents)
    return seen


def resolve(repo, rev: str) -> str:
    """A revision string to a full commit id (``main~2``, ``v1^``, ``main@{1}``: where
    main pointed one move ago, from the reflog)."""
    m = re.match(r"^(.+?)@\{(\d+)\}(.*)$", rev)
    if m:
        name, n, rest = m.group(1), int(m.group(2)), m.group(3)
        entries = repo.reflog(name if "/" in name else f"heads/{name}")
        if n >= len(entries) or not entries[n].get("new"):
            raise NotFound("revision", rev)
        base_cid = entries[n]["new"]
        if name.startswith("tags/"):
            base_cid = repo._peel(base_cid)
        return repo.resolve(base_cid + rest) if rest else base_cid
    base, ops = revparse.split(rev)
    cid = repo._resolve_name(base)
    for op, n in ops:
        if op == "~":
            for _ in range(n):
                parents = repo.commit_obj(cid).parents
                if not parents:
                    raise NotFound("revision", rev)
                cid = parents[0]
        else:
            parents = repo.commit_obj(cid).parents
            if n == 0:
                continue
            if len(parents) < n:
                raise NotFound("revision", rev)
            cid = parents[n - 1]
    return cid


def resolve_name(repo, name: str) -> str:
    if not revparse.is_hex_prefix(name):
        try:
            revparse.check_ref_name(name)      # never a path: '../../corafs.json'
        except CorafsError:
            raise NotFound("revision", name) from None
    cid = repo.store.get_ref(f"heads/{name}")
    if cid is not None:
        return cid
    tag = repo.store.get_ref(f"tags/{name}")
    if tag is not None:
        return repo._peel(tag)
    if revparse.is_hex_prefix(name):
        if len(name) == 64 and repo.store.has(name):
            return name
        matches = sorted(c for c in repo.all_commits() if c.startswith(name))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousRevision(name, matches)
    raise NotFound("revision", name)


def log(repo, rev: Optional[str] = None, limit: Optional[int] = None) -> list[Commit]:
    """Commits reachable from ``rev``, newest first."""
    start = repo.resolve(rev or repo.default_branch)
    out, seen = [], set()
    frontier = [repo.commit_obj(start)]
    while frontier and (limit is None or len(out) < limit):
        frontier.sort(key=lambda c: c.time_ns)
        c = frontier.pop()
        if c.id in seen:
            continue
        seen.add(c.id)
        out.append(c)
        frontier.extend(repo.commit_obj(p) for p in c.parents if p not in seen)
    return out


def first_parent_history(repo, rev: str) -> list[Commit]:
    """The first-parent chain of ``rev``, oldest first."""
    out = []
    cid: Optional[str] = repo.resolve(rev)
    while cid is not None:
        c = repo.commit_obj(cid)
        out.append(c)
        cid = c.parents[0] if c.parents else None
    out.reverse()
    return out


def commit_range(repo, spec: Optional[str] = None) -> list[Commit]:
    """The commits of ``spec``, oldest first, along first parents: ``BRANCH`` (or any
    revision) is its whole first-parent chain, ``A..B`` the part of B's that is not in A's
    history."""
    spec = spec or repo.default_branch
    if ".." in spec:
        a, b = spec.split("..", 1)
        chain = first_parent_history(repo, b or repo.default_branch)
        exclude = ancestors(repo, repo.resolve(a)) if a else set()
        return [c for c in chain if c.id not in exclude]
    return first_parent_history(repo, spec)


def ancestors(repo, cid: str) -> set[str]:
    seen: set[str] = set()
    stack = [cid]
    while stack:
        c = stack.pop()
        if c not in seen:
            seen.add(c)
            stack.extend(repo.commit_obj(c).parents)
    return seen


def is_ancestor(repo, a: str, b: str) -> bool:
    return a in repo.ancestors(b)


def merge_bases(repo, a: str, b: str) -> list[str]:
    """Every best common ancestor (more than one after criss-cross merges), newest
    first."""
    ca, cb = repo.resolve(a), repo.resolve(b)
    common = repo.ancestors(ca) & repo.ancestors(cb)
    best = set(common)
    for c in common:
        for p in repo.commit_obj(c).parents:
            best -= repo.ancestors(p)
    return sorted(best, key=lambda c: (repo.commit_obj(c).time_ns, c), reverse=True)


def merge_base(repo, a: str, b: str) -> Optional[str]:
    """The newest best common ancestor (see ``merge_bases``)."""
    bases = repo.merge_bases(a, b)
    return bases[0] if bases else None

"""fsck: every ref points at a commit, every reachable object is readable and matches its id,
every file rebuilds to its recorded sha256, every object in the store can be read.

It runs under the repository's re-encoding lease, which re-encoding and repack/gc hold while
they replace packs: a pack that one of them removes in the middle of the check would otherwise
read as damage ("unreadable pack") when the data is intact in its successor."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Optional

from .. import codecs
from ..errors import CorafsError
from . import headfirst, maintenance, tree
from .objects import META_MAGIC, decode_meta, tensor_hasher


def _check_tensor_manifest(repo, reader, t: dict, where: str, rep) -> None:
    """A tensor manifest is addressed by its tensor's content, not its own bytes: check it
    says the same as the file (dtype, shape, size, blocks)."""
    tm = repo.tensor_manifest(t["id"])
    if (tm.get("dtype"), list(tm.get("shape", [])), tm.get("nbytes")) != \
            (t["dtype"], list(t["shape"]), t["nbytes"]):
        rep.problems.append((f"{where} tensor {t['name']}",
                             "tensor manifest does not describe this tensor"))
        return
    blocks = [b[0] for b in tm.get("blocks", [])]
    if t["nbytes"] and blocks != reader.objects_for(t["offset"], t["nbytes"]):
        rep.problems.append((f"{where} tensor {t['name']}",
                             "tensor manifest lists other blocks than the file"))


@dataclasses.dataclass
class FsckReport:
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: leftovers of interrupted writes: (path, bytes, whether a live writer still owns it).
    #: Garbage, not damage: they never make ``ok`` false.
    garbage: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)
    repaired: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: re-encoding jobs set aside (their blocks could not be read); not damage in themselves
    held: list = dataclasses.field(default_factory=list)
    #: held jobs queued again by ``repair``
    requeued: int = 0
    commits: int = 0
    files: int = 0
    objects: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(repo, on_progress: Optional[Callable[[int], None]] = None,
         repair: bool = False) -> FsckReport:
    with maintenance.lock(repo):
        rep = _fsck(repo, on_progress, repair)
        if repair:
            rep.requeued = headfirst.requeue_held(repo)
        rep.held = headfirst.held(repo)
    return rep


def _fsck(repo, on_progress, repair: bool) -> FsckReport:
    rep = FsckReport()
    progress = on_progress or (lambda n: None)
    if repair:
        rep.repaired = repo.store.clean_temporaries()
    rep.garbage = repo.store.temporaries()
    for what, problem in repo.store.verify():
        rep.problems.append((what, problem))
    verified: set[str] = set()

    commits: set[str] = set()
    for kind, refs in (("branch", repo.store.list_refs("heads/")),
                       ("tag", repo.store.list_refs("tags/"))):
        for name, oid in refs.items():
            try:
                obj = repo.get_meta(oid)
                verified.add(oid)
                cid = obj["commit"] if obj.get("type") == "tag" else oid
                repo.commit_obj(cid)
                commits.add(cid)
            except CorafsError as e:
                rep.problems.append((f"ref {name}", str(e)))
    stack, seen = list(commits), set()
    files: dict[str, tuple[str, dict]] = {}
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        try:
            c = repo.commit_obj(cid)
            verified.add(cid)
            stack.extend(c.parents)
            verified.add(c.tree)
            for path, e in tree.walk(repo, c.tree):
                if e["kind"] == "link":
                    continue
                verified.add(e["id"])
                if e["kind"] == "file" and e["id"] not in files:
                    files[e["id"]] = (f"{cid[:12]}:{path}", e)
        except CorafsError as e:
            rep.problems.append((f"commit {cid[:12]}", str(e)))
    rep.commits = len(seen)

    for fid, (where, e) in files.items():
        rep.files += 1
        try:
            m = repo.get_meta(fid)
            r = repo.open_file(fid)
            tensors = sorted(m.get("tensors", []), key=lambda t: t["offset"])
            for t in tensors:
                _check_tensor_manifest(repo, r, t, where, rep)
                verified.add(t["id"])
            hashers = [tensor_hasher(t["dtype"], t["shape"]) for t in tensors]
            h = hashlib.sha256()
            pos, first = 0, 0
            for piece in r.chunks(repo.pool):
                h.update(piece)
                end = pos + len(piece)
                j = first            # each tensor's id is the hash of its bytes: check it
                while j < len(tensors) and tensors[j]["offset"] < end:
                    t = tensors[j]
                    a, b = max(t["offset"], pos), min(t["offset"] + t["nbytes"], end)
                    if b > a:
                        hashers[j].update(piece[a - pos:b - pos])
                    j += 1
                while first < len(tensors) and \
                        tensors[first]["offset"] + tensors[first]["nbytes"] <= end:
                    first += 1
                pos = end
                progress(len(piece))
            for t, th in zip(tensors, hashers):
                if th.hexdigest() != t["id"]:
                    rep.problems.append((f"{where} tensor {t['name']}",
                                         "its bytes do not match its tensor id"))
            verified.update(r.objs)
            rep.bytes_checked += r.size
            if h.hexdigest() != m["sha256"] or m["sha256"] != e.get("sha256", m["sha256"]):
                rep.problems.append((where, "content does not match its recorded sha256"))
            if m["size"] != e.get("size", m["size"]):
                rep.problems.append((where, "size in the tree differs from the file's"))
        except CorafsError as ex:
            rep.problems.append((where, str(ex)))

    for oid in repo.store.ids():
        rep.objects += 1
        if oid in verified:
            continue
        try:
            payload = repo.store.get(oid)
            head = bytes(memoryview(payload)[:3])
            if head == META_MAGIC and len(oid) == 64:
                decode_meta(oid, payload)
            elif codecs.is_block(head):
                repo.decoder.raw(oid)
            elif head != META_MAGIC:
                rep.problems.append((f"object {oid}", "unknown object type"))
        except CorafsError as ex:
            rep.problems.append((f"object {oid}", str(ex)))
    return rep

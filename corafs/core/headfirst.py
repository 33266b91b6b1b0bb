"""Head-first encoding: the newest version of a block is stored whole, history as deltas
against newer versions (reverse deltas, as git packs do). This module is its queue.

A commit stores its new float blocks as keyframes (ingest; ``Tuning.head_codec``: raw for fp32
by default, so reading the head is a copy, not a decode), so the version just committed reads
without decoding any chain. What it replaced is re-encoded afterwards: every commit queues a
*job* (``objects/reencode/<time>-<commit>.job``, written after the ref moved), and a job
(``lineage.Job``: the encoding rules, one lineage of block versions at a time) turns the
parent's version of every changed tensor into deltas against the blocks that replaced it.
Objects are addressed by their decoded bytes, so a new encoding is just a newer copy of the same
object (the store reads the newest pack's copy); no tree, recipe or commit changes, and a reader
meets either encoding, both correct.

Jobs run one at a time per repository, under the store's ``reencode`` lease, which repack
also takes so a copy never resurrects an old encoding: ``core/maintenance.py`` owns the lease
and the order (re-encode, then repack what that superseded). A job's encodings land in one pack
(durable on commit) before the job file is removed; a crash leaves the job to run again (what
it did is skipped) and its temporaries to the next writer's cleanup. A job some of whose blocks
cannot be read is set aside (``.held``) with its reason; ``requeue_held`` queues it again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Optional

from .. import codecs
from ..dtypes import lookup
from ..store.fsutil import atomic_write
from .lineage import Job, tree_tensor_ids, _check

JOBS = os.path.join("objects", "reencode")


@dataclasses.dataclass
class ReencodeReport:
    jobs: int = 0
    blocks: int = 0               # blocks re-encoded as reverse deltas
    upgraded: int = 0             # reverse deltas upgraded to second order
    bytes_before: int = 0         # stored bytes of those blocks before
    bytes_after: int = 0
    anchors: int = 0              # blocks that closed a run (floating root or anchor)
    followed: int = 0             # floating roots re-encoded against the new head
    pinned: int = 0               # floating roots that became keyframes (a delta no longer paid)
    compressed: int = 0           # raw head keyframes compressed once no longer the head
    held: int = 0                 # jobs set aside: some of their blocks could not be read
    seconds: float = 0.0


def _dir(repo) -> str:
    return os.path.join(repo.path, JOBS)


def enqueue(repo, cid: str) -> None:
    """Queue the re-encoding of what commit ``cid`` replaced (after its ref moved)."""
    d = _dir(repo)
    os.makedirs(d, exist_ok=True)
    atomic_write(os.path.join(d, f"{time.time_ns():016x}-{cid}.job"), cid.encode(), _token(repo))


def pending(repo) -> list[str]:
    """Queued job files, oldest first."""
    try:
        names = os.listdir(_dir(repo))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(".job"))


@dataclasses.dataclass
class HeldJob:
    """A job set aside because some of the blocks it re-encodes could not be read (a block
    missing or corrupt in the store). What it could do was done; reads are unaffected (every
    version reads as it did); ``corafs fsck`` names the damage and ``requeue_held`` (run by
    ``fsck --repair`` after a repair) gives it another try."""
    name: str
    commit: str
    reason: str
    time: float


def held(repo) -> list[HeldJob]:
    """Jobs set aside, oldest first."""
    d = _dir(repo)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".held"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            with open(os.path.join(d, n)) as f:
                r = json.load(f)
            out.append(HeldJob(n, r["commit"], r["reason"], r["time"]))
        except (OSError, ValueError, KeyError):
            continue
    return out


def _set_aside(repo, name: str, cid: str, reason: str) -> None:
    """Replace queued job ``name`` by a held record with its reason (the record first: a
    crash in between leaves the job queued, to be tried again)."""
    d = _dir(repo)
    rec = json.dumps({"commit": cid, "reason": reason, "time": time.time()}).encode()
    atomic_write(os.path.join(d, name[:-len(".job")] + ".held"), rec, _token(repo))
    try:
        os.unlink(os.path.join(d, name))
    except FileNotFoundError:
        pass


def requeue_held(repo) -> int:
    """Queue every held job again (after a repair); returns how many."""
    d = _dir(repo)
    n = 0
    for h in held(repo):
        atomic_write(os.path.join(d, h.name[:-len(".held")] + ".job"), h.commit.encode(),
                     _token(repo))
        try:
            os.unlink(os.path.join(d, h.name))
        except FileNotFoundError:
            pass
        n += 1
    return n


def _token(repo):
    return repo.store.token()


def run_jobs(repo, rep: ReencodeReport, cancel: Optional[threading.Event] = None) -> bool:
    """Run every queued job, oldest first, adding to ``rep``; the caller holds the
    re-encoding lease (core/maintenance.py). False when ``cancel`` stopped it (the job it was
    in stays queued). A job whose blocks could not all be read is set aside with its reason."""
    repo.refresh_settings()       # corafs config may have changed them since we opened
    while True:
        jobs = pending(repo)
        if not jobs:
            return True
        for name in jobs:
            if cancel is not None and cancel.is_set():
                return False
            path = os.path.join(_dir(repo), name)
            try:
                with open(path) as f:
                    cid = f.read().strip()
            except FileNotFoundError:
                continue
            job = Job(repo, cid, rep, cancel)
            if not job.run():
                return False                       # cancelled: the job stays queued
            rep.jobs += 1
            if job.unreadable:
                # what could be re-encoded was; the job is set aside with its reason instead
                # of failing every later commit, gc and re-encoding run
                rep.held += 1
                _set_aside(repo, name, cid, job.reason())
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


@dataclasses.dataclass
class HistoryReport:
    commits: int = 0              # commits whose history was re-encoded (one job each)
    reset: int = 0                # delta blocks written out whole before the replay
    reencode: Optional[ReencodeReport] = None


def history(repo) -> list[list]:
    """Each branch's first-parent history, oldest first."""
    return [repo.first_parent_history(cid) for cid in repo.branches().values()]


def write_history_whole(repo, histories: list[list],
                        cancel: Optional[threading.Event] = None) -> Optional[int]:
    """The first step of re-encoding a whole history (core/maintenance.py): every delta block
    of every float tensor of ``histories`` and of the tagged commits is written whole (a
    keyframe: a newer copy of the same object, so every version reads throughout), in one
    batch. The caller holds the re-encoding lease. Returns how many, None when cancelled."""
    commits: list[str] = []
    seen: set[str] = set()
    for hist in histories:
        for c in hist:
            if c.id not in seen:
                seen.add(c.id)
                commits.append(c.id)
    commits += [t for t in (repo.resolve(n) for n in repo.tags()) if t not in seen]
    blocks: dict[str, str] = {}
    for cid in commits:
        for tid in tree_tensor_ids(repo, repo.commit_obj(cid).tree):
            tm = repo.tensor_manifest(tid)
            if not lookup(tm["dtype"]).is_float:
                continue
            for b in tm["blocks"]:
                blocks.setdefault(b[0], tm["dtype"])
    todo = [(b, dt) for b, dt in blocks.items() if repo.block_header(b).is_delta]
    if not todo:
        return 0
    level = repo.tuning.zstd_level

    def whole(item):
        oid, dtype = item
        payload, _c, _d = codecs.encode_block(repo.decoder.raw(oid), dtype, level)
        _check(payload, oid, {})
        return oid, payload

    w = repo.store.writer()
    try:
        for i in range(0, len(todo), 64):
            if cancel is not None and cancel.is_set():
                w.abort()
                return None
            for oid, payload in repo.pool.map(whole, todo[i:i + 64]):
                w.put(oid, payload)
        w.commit()
    except BaseException:
        w.abort()
        raise
    return len(todo)


def queue_history(repo, histories: list[list]) -> int:
    """Queue one job per commit of ``histories`` that has a parent, oldest first."""
    queued: set[str] = set()
    for hist in histories:
        for c in hist:
            if c.parents and c.id not in queued:
                queued.add(c.id)
                enqueue(repo, c.id)
    return len(queued)

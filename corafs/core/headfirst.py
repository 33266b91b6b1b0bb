"""Head-first encoding: the newest version of a block is stored whole, history as deltas
against newer versions (reverse deltas, as git packs do).

A commit stores its new float blocks as keyframes (ingest; ``Tuning.head_codec``: raw by
default, so reading the head is a copy, not a decode), so the version just committed reads
without decoding any chain. What it replaced is re-encoded afterwards: every commit queues a
*job* (``objects/reencode/<time>-<commit>.job``, written after the ref moved), and a job turns
each block of the parent's version of every changed tensor into a delta against the block
that replaced it. Objects are addressed by their decoded bytes, so a new encoding is just a
newer copy of the same object (``LocalStore`` reads the newest pack's copy); no tree, recipe or
commit changes, and a reader meets either encoding, both correct.

Runs. A tensor manifest names the version it replaced (``prev``, set at ingest). The blocks of
consecutive versions form a *run*: each a reverse delta against the next, the newest of the run
a keyframe. A reverse delta's header depth is its position in the run from the oldest (1), so
re-encoding the old head learns the run's length from the block just below it, one header
read. A run grows to ``max_delta_depth - 1`` deltas; then the old head closes it: it becomes a
far delta against the lineage's *root* (the keyframe below the run: the first run's closing
block, which stays a keyframe), and a new run starts above it. So every version decodes
through at most ``max_delta_depth`` deltas, and a long history holds two keyframes per block
(the head and the root), as forward deltas anchored at the root held one.

A head block that stays a keyframe once replaced (a run's root, or no delta pays) is
compressed then (planes + zstd). Per block the delta codec is chosen as at ingest (XOR,
ordered subtraction, keyframe). When the block below the old head is a first-order delta
against it, it is upgraded to second order
(residual against ``2*old - new``: training moves weights in consistent directions) where that
is smaller. Blocks of branch heads and tags stay keyframes: a block that any branch head or tag
still holds is not re-encoded (it is, once nothing holds it: when the other branch moves on),
and a run does not grow over a block a head or a tag holds, so a tagged version stays one
delta away from a keyframe.

Safety:
* a block is re-encoded only against a keyframe, and only while it is a keyframe itself, so
  no chain can loop; jobs run one at a time per repository (the store's ``reencode`` lease:
  ``objects/reencode.lock`` locally, a lease object across machines on S3), also taken by
  repack so a copy never resurrects an old encoding, and the index is refreshed once it is
  held;
* every new encoding is decoded and checked against the object id before it is written;
* a job's encodings land in one pack (durable on commit) before the job file is removed; a
  crash leaves the job to run again (blocks already re-encoded are skipped) and its
  temporaries to the next writer's cleanup;
* after the jobs, packs whose bytes are mostly superseded encodings are rewritten
  (``repack`` of duplicates only), so the space comes back without a manual gc.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from .. import codecs
from ..dtypes import lookup
from ..errors import CorafsError
from ..store.local import atomic_write
from . import tree
from .objects import data_id

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
    return repo.store.token() if hasattr(repo.store, "token") else None


@contextlib.contextmanager
def lock(repo, blocking: bool = True):
    """One re-encoder (or repack) per repository at a time: the store's lease (a file lock
    locally, a lease object shared by every machine on S3). Yields whether it was taken
    (always, when blocking). Once taken, the index takes in what others re-encoded: a block
    is re-encoded only while it is a keyframe, which must not be judged on a stale view."""
    with repo.store.lease("reencode", blocking) as got:
        if got:
            repo.store.refresh()
        yield got


def run_pending(repo, cancel: Optional[threading.Event] = None, repack: bool = True,
                blocking: bool = True) -> ReencodeReport:
    """Run every queued job, then rewrite packs that are mostly superseded encodings.
    ``cancel`` stops between blocks (the job stays queued). Without ``blocking``, returns at
    once when another process holds the lock (it runs the queue)."""
    rep = ReencodeReport()
    t0 = time.perf_counter()
    with lock(repo, blocking) as got:
        if not got:
            return rep
        repo.refresh_settings()       # corafs config may have changed them since we opened
        while True:
            jobs = pending(repo)
            if not jobs:
                break
            for name in jobs:
                if cancel is not None and cancel.is_set():
                    rep.seconds = time.perf_counter() - t0
                    return rep
                path = os.path.join(_dir(repo), name)
                try:
                    with open(path) as f:
                        cid = f.read().strip()
                except FileNotFoundError:
                    continue
                job = _Job(repo, cid, rep, cancel)
                if not job.run():
                    rep.seconds = time.perf_counter() - t0
                    return rep                     # cancelled: the job stays queued
                rep.jobs += 1
                if job.unreadable:
                    # what could be re-encoded was; the job is set aside with its reason
                    # instead of failing every later commit, gc and re-encoding run
                    rep.held += 1
                    _set_aside(repo, name, cid, job.reason())
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if repack and rep.blocks + rep.upgraded + rep.compressed:
            from .gc import repack as _repack
            _repack(repo, collect=False, grace=0.0, min_waste=repo.tuning.repack_waste,
                    consolidate=False, _locked=True)
    rep.seconds = time.perf_counter() - t0
    return rep


@dataclasses.dataclass
class HistoryReport:
    commits: int = 0              # commits whose history was re-encoded (one job each)
    reset: int = 0                # delta blocks written out whole before the replay
    reencode: Optional[ReencodeReport] = None


def reencode_history(repo, cancel: Optional[threading.Event] = None) -> HistoryReport:
    """Bring a repository's whole history to the current encoding scheme (``corafs repack
    --reencode``): a repository written by an older corafs (runs closed a version early,
    second keyframes) or with forward deltas (``head_first=False``) is re-encoded as if each
    of its commits had been made now.

    How: every delta block of every float tensor reachable from a branch or a tag is first
    written whole (a keyframe: a newer copy of the same object, so every version reads
    correctly throughout), then one job per commit of each branch's first-parent history is
    queued, oldest first, and the queue runs as it does after commits. Each step lands in
    packs of its own before the next begins; killed midway, what is queued runs with the next
    command (``objects/reencode/*.job``). Needs room for the whole history stored as
    keyframes until the jobs and the repack that follows have run."""
    rep = HistoryReport()
    histories = [repo.first_parent_history(cid) for cid in repo.branches().values()]
    commits: list[str] = []
    seen: set[str] = set()
    for hist in histories:
        for c in hist:
            if c.id not in seen:
                seen.add(c.id)
                commits.append(c.id)
    tagged = [repo.resolve(t) for t in repo.tags()]
    with lock(repo):
        blocks: dict[str, str] = {}
        for cid in commits + [t for t in tagged if t not in seen]:
            for tid in tree_tensor_ids(repo, repo.commit_obj(cid).tree):
                tm = repo.tensor_manifest(tid)
                if not lookup(tm["dtype"]).is_float:
                    continue
                for b in tm["blocks"]:
                    blocks.setdefault(b[0], tm["dtype"])
        todo = [(b, dt) for b, dt in blocks.items() if repo.block_header(b).is_delta]
        if todo:
            w = repo.store.writer()
            try:
                level = repo.tuning.zstd_level

                def whole(item):
                    oid, dtype = item
                    raw = repo.decoder.raw(oid)
                    payload, _c, _d = codecs.encode_block(raw, dtype, level)
                    _check(payload, oid, {})
                    return oid, payload

                for i in range(0, len(todo), 64):
                    if cancel is not None and cancel.is_set():
                        w.abort()
                        return rep
                    for oid, payload in repo.pool.map(whole, todo[i:i + 64]):
                        w.put(oid, payload)
                w.commit()
            except BaseException:
                w.abort()
                raise
            rep.reset = len(todo)
    queued: set[str] = set()
    for hist in histories:
        for c in hist:
            if c.parents and c.id not in queued:
                queued.add(c.id)
                enqueue(repo, c.id)
    rep.commits = len(queued)
    rep.reencode = run_pending(repo, cancel=cancel)
    return rep


class _Job:
    def __init__(self, repo, cid: str, rep: ReencodeReport,
                 cancel: Optional[threading.Event]):
        self.repo = repo
        self.store = repo.store
        self.cid = cid
        self.rep = rep
        self.cancel = cancel
        self.t = repo.tuning
        self._protected: Optional[set[str]] = None
        self._lock = threading.Lock()
        #: (block, error) for blocks whose stored data could not be read
        self.unreadable: list[tuple[str, BaseException]] = []

    def reason(self) -> str:
        oid, e = self.unreadable[0]
        more = f" (and {len(self.unreadable) - 1} more)" if len(self.unreadable) > 1 else ""
        return f"block {oid[:12]}{more} could not be read: {type(e).__name__}: {e}"

    def run(self) -> bool:
        """Re-encode; False when cancelled (nothing of this job is kept then)."""
        try:
            pairs = list(self._pairs())
        except CorafsError:
            return True            # the commit is gone or unreadable: nothing to do
        if not pairs:
            return True
        w = self.store.writer()
        try:
            threads = max(1, min(self.t.workers, os.cpu_count() or 1))
            with ThreadPoolExecutor(threads, thread_name_prefix="corafs-reencode") as ex:
                futs = [ex.submit(self._guarded, w, *p) for p in pairs]
                for f in futs:
                    f.result()
            if self.cancel is not None and self.cancel.is_set():
                w.abort()
                return False
            w.commit()
        except BaseException:
            w.abort()
            raise
        return True

    # -- what to re-encode ----------------------------------------------------------------------
    def _pairs(self):
        """(dtype, old block, new block, block below old or None, its tensor) per changed
        block of every tensor this commit replaced."""
        repo = self.repo
        c = repo.commit_obj(self.cid)
        if not c.parents:
            return
        old_tree = repo.commit_obj(c.parents[0]).tree
        for tm in self._new_tensors(c.tree, old_tree):
            if tm["prev"] in self.protected():
                continue        # still held (by this commit's other files, another branch's
                                # head or a tag): heads and tags stay keyframes
            try:
                prev = repo.tensor_manifest(tm["prev"])
            except CorafsError:
                continue
            if not _compatible(tm, prev) or not lookup(tm["dtype"]).is_float:
                continue
            below = below_tid = None
            if prev.get("prev"):
                try:
                    below = repo.tensor_manifest(prev["prev"])
                    below_tid = prev["prev"]
                except CorafsError:
                    below = None
                if below is not None and not _compatible(prev, below):
                    below = None
            for i, (new_b, old_b) in enumerate(zip(tm["blocks"], prev["blocks"])):
                if new_b[0] == old_b[0]:
                    continue
                pred = below["blocks"][i][0] if below is not None else None
                yield tm["dtype"], old_b[0], new_b[0], pred, below_tid, i

    def _new_tensors(self, new_tree: str, old_tree: str):
        """Tensor manifests (with ``prev``) of the files that differ between the trees."""
        repo = self.repo
        seen: set[str] = set()
        for e in _changed_files(repo, new_tree, old_tree):
            if e.get("format") in (None, "opaque"):
                continue
            for t in repo.get_meta(e["id"]).get("tensors", []):
                if t["id"] in seen:
                    continue
                seen.add(t["id"])
                try:
                    tm = repo.tensor_manifest(t["id"])
                except CorafsError:
                    continue
                if tm.get("prev"):
                    yield tm

    def protected(self) -> set[str]:
        """Tensor ids held by a branch head or a tag: a run does not grow over them."""
        if self._protected is None:
            out: set[str] = set()
            repo = self.repo
            roots = set(repo.branches().values()) | set(repo.tags().values()) | {self.cid}
            cache = repo.held_tensors_cache
            for cid in roots:
                ids = cache.get(cid)
                if ids is None:
                    try:
                        ids = tree_tensor_ids(repo, repo.commit_obj(cid).tree)
                    except CorafsError:
                        continue
                    if len(cache) > 256:
                        cache.clear()
                    cache[cid] = ids        # a commit never changes: cached by its id
                out |= ids
            self._protected = out
        return self._protected

    # -- one block --------------------------------------------------------------------------------
    def _guarded(self, w, dtype, old, *rest) -> None:
        """One block; one whose stored data cannot be read (missing, corrupt) is skipped and
        recorded, and the job goes on. A failure to write is the job's (it stays queued)."""
        try:
            self._block(w, dtype, old, *rest)
        except _WriteFailed as e:
            raise e.__cause__ from None
        except Exception as e:
            with self._lock:
                self.unreadable.append((old, e))

    def _put(self, w, oid: str, payload) -> None:
        try:
            w.put(oid, payload)
        except Exception as e:
            raise _WriteFailed() from e

    def _block(self, w, dtype: str, old: str, new: str, pred: Optional[str],
               pred_tid: Optional[str], index: int) -> None:
        """Re-encode one block position of a lineage for its new head ``new``: the old head
        ``old`` joins the run below it, or closes it (becoming the floating root or an anchor
        against it), and the floating root below follows the head."""
        if self.cancel is not None and self.cancel.is_set():
            return
        repo = self.repo
        h_new = repo.block_header(new)      # unreadable: recorded by _guarded
        h_old = repo.block_header(old)
        if h_new.is_delta:
            return      # only ever against a keyframe: no chain can loop
        pos, h_pred = 1, None
        if pred is not None:
            try:
                h_pred = repo.block_header(pred)
            except Exception:
                h_pred = None
            if h_pred is not None and h_pred.reverse and not h_pred.floating \
                    and h_pred.base_ids[:1] == [old]:
                pos = h_pred.depth + 1
            else:
                h_pred = None
        fl = self._floating_root(pred, pred_tid, index, pos) if pred is not None else None
        old_raw = new_raw = None
        moved = True                         # done by an earlier run of this job
        if not h_old.is_delta:
            old_raw, new_raw, moved = self._old_head(w, dtype, old, h_old, new, pos, fl,
                                                     h_pred, pred, pred_tid)
        # the floating root follows the head only when the old head became a delta. One that
        # stays whole is a keyframe for good, and the floating root stays a delta against
        # it: below a keyframe no later job would find it to follow it again
        if moved and fl is not None and fl != old \
                and repo.block_header(fl).base_ids[:1] != [new]:
            self._follow(w, dtype, fl, new, old, old_raw, new_raw)

    def _old_head(self, w, dtype, old, h_old, new, pos, fl, h_pred, pred, pred_tid):
        """The old head (a keyframe) becomes a reverse delta at position ``pos`` of the run
        below it, or closes the run. Returns the decoded (old, new) blocks it used, if any,
        and whether it became a delta (else it stays a keyframe, compressed)."""
        repo = self.repo
        level = self.t.zstd_level
        D = self.t.max_delta_depth
        if h_pred is not None and pred_tid in self.protected():
            # the block below is a head's or a tag's: keep it one delta away
            self._compress(w, old, dtype, h_old)
            return None, None, False
        # where the run closes: the oldest of a run sits at depth D. Under the floating root
        # (depth 1) a run holds D-1 deltas; under an anchor against it (depth 2), D-2.
        close = D - 1 if fl is not None else D
        old_raw = _verified(repo, old)
        if pos >= close and fl is not None:
            # an anchor: a far delta against the floating root (fixed from now on)
            fl_raw = _verified(repo, fl)
            payload, codec, _d = codecs.encode_block(old_raw, dtype, level, fl_raw, fl, 1, 256)
            with self._lock:
                self.rep.anchors += 1
            if not codecs.REGISTRY[codec].is_delta:
                self._compress(w, old, dtype, h_old, old_raw)
                return old_raw, None, False
            _check(payload, old, {fl: fl_raw})
            self._replace(w, old, payload)
            return old_raw, None, True
        new_raw = _verified(repo, new)
        floating = pos >= close             # no floating root below: this one becomes it
        flags = codecs.REVERSE | (codecs.FLOATING if floating else 0)
        payload, codec, _d = codecs.encode_block(old_raw, dtype, level, new_raw, new,
                                                 0 if floating else pos - 1, 256, flags=flags)
        if not codecs.REGISTRY[codec].is_delta:
            # a delta does not pay here: stays a keyframe
            self._compress(w, old, dtype, h_old, old_raw)
            return old_raw, new_raw, False
        _check(payload, old, {new: new_raw})
        self._replace(w, old, payload)
        if floating:
            with self._lock:
                self.rep.anchors += 1
            return old_raw, new_raw, True
        if h_pred is not None and codecs.REGISTRY[h_pred.codec].bases == 1 \
                and not (self.cancel is not None and self.cancel.is_set()):
            # the block below was a first-order delta against the old head: second order
            # (against 2*old - new) where that is smaller
            pred_raw = _decode(repo, pred, {old: old_raw})
            p2, c2, _ = codecs.encode_block(pred_raw, dtype, level, old_raw, old,
                                            h_pred.depth - 1, 256, base2=new_raw, base2_id=new,
                                            flags=codecs.REVERSE)
            size = self.store.size_of(pred)
            if codecs.REGISTRY[c2].bases == 2 and len(p2) < size:
                _check(p2, pred, {old: old_raw, new: new_raw})
                self._put(w, pred, p2)
                with self._lock:
                    self.rep.upgraded += 1
                    self.rep.bytes_before += size - len(p2)
        return old_raw, new_raw, True

    def _follow(self, w, dtype, fl, new, old, old_raw, new_raw) -> None:
        """The floating root becomes a delta against the new head (its depth stays 1), or,
        once that no longer pays against a keyframe, a keyframe for good (it is *pinned*:
        the next run to close becomes the new floating root)."""
        repo = self.repo
        bases = {} if old_raw is None else {old: old_raw}
        fl_raw = _decode(repo, fl, bases)
        new_raw = _verified(repo, new) if new_raw is None else new_raw
        payload, codec, _d = codecs.encode_block(fl_raw, dtype, self.t.zstd_level, new_raw, new,
                                                 0, 256, flags=codecs.REVERSE | codecs.FLOATING)
        _check(payload, fl, {new: new_raw})
        self._replace(w, fl, payload)
        with self._lock:
            self.rep.followed += 1
            if not codecs.REGISTRY[codec].is_delta:
                self.rep.pinned += 1

    def _replace(self, w, oid: str, payload: bytes) -> None:
        before = self.store.size_of(oid)
        self._put(w, oid, payload)
        with self._lock:
            self.rep.blocks += 1
            self.rep.bytes_before += before
            self.rep.bytes_after += len(payload)

    def _floating_root(self, pred: str, pred_tid: Optional[str], index: int,
                       pos: int) -> Optional[str]:
        """The lineage's floating root, found below the run under the old head: the block
        ``pos`` versions down is the floating root itself, or an anchor against it (or against
        a pinned root, a keyframe: then there is none)."""
        repo = self.repo
        b, tid = pred, pred_tid
        try:
            for _ in range(pos - 1):
                tid = repo.tensor_manifest(tid).get("prev")
                if tid is None:
                    return None
                b = repo.tensor_manifest(tid)["blocks"][index][0]
            h = repo.block_header(b)
            if h.floating:
                return b
            if h.is_delta and not h.reverse:
                base = h.base_ids[0]
                if repo.block_header(base).floating:
                    return base
        except (CorafsError, IndexError, KeyError, ValueError, TypeError):
            return None
        return None

    def _compress(self, w, oid: str, dtype: str, h, raw=None) -> None:
        """A block that stays a keyframe but is no longer a head's: stored raw for reading
        speed while it was the newest version, it is compressed now."""
        if h.codec != "raw":
            return
        raw = _verified(self.repo, oid) if raw is None else raw
        payload, codec, _d = codecs.encode_block(raw, dtype, self.t.zstd_level)
        if codec == "raw":
            return
        _check(payload, oid, {})
        self._put(w, oid, payload)
        with self._lock:
            self.rep.compressed += 1
            self.rep.bytes_before += h.raw_len
            self.rep.bytes_after += len(payload)


class _WriteFailed(Exception):
    """Raised by ``_Job._put``: the store refused a write (its cause says why)."""


def tree_tensor_ids(repo, tree_id: str) -> set[str]:
    """Ids of every tensor of every checkpoint in a tree."""
    out: set[str] = set()
    for _p, e in tree.walk(repo, tree_id):
        if e["kind"] == "file" and e.get("format") not in (None, "opaque"):
            out.update(t["id"] for t in repo.get_meta(e["id"]).get("tensors", []))
    return out


def _compatible(a: dict, b: dict) -> bool:
    return (a["dtype"] == b["dtype"] and a["nbytes"] == b["nbytes"]
            and a.get("block_size") == b.get("block_size")
            and len(a["blocks"]) == len(b["blocks"]))


def _changed_files(repo, new_tree: str, old_tree: Optional[str]):
    """File entries of ``new_tree`` that are not in ``old_tree`` as they are (subtrees with
    the same id are skipped whole)."""
    new = repo.get_meta(new_tree)["entries"]
    old = repo.get_meta(old_tree)["entries"] if old_tree else {}
    for name, e in new.items():
        o = old.get(name)
        if o is not None and o.get("id") == e.get("id"):
            continue
        if e["kind"] == "dir":
            yield from _changed_files(repo, e["id"],
                                      o["id"] if o is not None and o["kind"] == "dir" else None)
        elif e["kind"] == "file":
            yield e


def _decode(repo, oid: str, bases: dict) -> np.ndarray:
    """Decode a block without filling the read cache (a mount's cache is for its readers)."""
    payload = repo.store.get(oid)
    arr = codecs.decode_block(payload, lambda b: bases[b] if b in bases else repo.decoder.raw(b))
    if data_id(arr) != oid:
        raise CorafsError(f"block {oid} does not decode to its id: not re-encoding it")
    return arr


def _verified(repo, oid: str) -> np.ndarray:
    cached = repo.cache.get(oid)
    return cached if cached is not None else _decode(repo, oid, {})


def _check(payload: bytes, oid: str, bases: dict) -> None:
    """A new encoding must decode to the object's bytes before it replaces the old one."""
    arr = codecs.decode_block(payload, lambda b: bases[b])
    if data_id(arr) != oid:
        raise CorafsError(f"re-encoding {oid} does not round-trip (a codec bug): not written")


class Background:
    """Runs the queue in a thread of its own (the mount daemon, the Python API): ``kick``
    after each commit; ``close`` stops between blocks and leaves the rest queued."""

    def __init__(self, repo):
        self.repo = repo
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: Optional[threading.Thread] = None
        self._mutex = threading.Lock()
        self.last: Optional[ReencodeReport] = None
        self.error: Optional[BaseException] = None

    def kick(self) -> None:
        with self._mutex:
            if self._stop.is_set():
                return
            self._idle.clear()
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="corafs-headfirst",
                                                daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=5.0):
                with self._mutex:
                    if not self._wake.is_set():
                        self._thread = None
                        self._idle.set()
                        return
                continue
            self._wake.clear()
            try:
                self.last = run_pending(self.repo, cancel=self._stop)
                self.error = None
            except Exception as e:   # reported by status; the jobs stay queued
                self.error = e
            with self._mutex:
                if not self._wake.is_set():
                    self._idle.set()
        self._idle.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until the queue this object was kicked for is done."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join()

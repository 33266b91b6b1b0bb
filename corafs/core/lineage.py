"""One commit's re-encoding: what the blocks it replaced become, lineage by lineage (the
versions of one block position, linked by the tensor manifests' ``prev``).

The rules (docs/codecs.md#bounded-chains). A commit stores its blocks whole; the job for it
turns each block of the old head into a reverse delta against the block that replaced it, at
position ``pos`` of the run below (a reverse delta's header depth is its position from the
run's oldest, so the run's length is one header read away). A version may sit at depth
``max_delta_depth`` (D):
* with no floating root below, the run closes when its oldest would pass D: the old head
  becomes the lineage's *floating root* (flags REVERSE|FLOATING, depth 1), a delta against
  the head, re-encoded against each new head;
* above a floating root, runs close on *anchors*: far deltas against it (depth 2, fixed);
* the floating root follows the head only when the old head became a delta; one that stays
  whole (a tagged block below it, a delta that does not pay) is a keyframe for good, and the
  floating root stays a delta against it; one that no longer pays as a delta is *pinned*;
* a block below the old head that is a first-order delta against it is upgraded to second
  order (against 2*old - new) where that is smaller;
* blocks held by a branch head or a tag are not re-encoded, and a run does not grow over one.

Safety: an old head is re-encoded only while it is a keyframe and a floating root only while
its base is not the new head, both only against a keyframe (the new head) or the floating
root, so no chain can loop and a job run again skips what it did; every new encoding is
decoded and checked against the object id before it is written.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from .. import codecs
from ..dtypes import lookup
from ..errors import CorafsError
from . import tree
from .objects import data_id


class Job:
    def __init__(self, repo, cid: str, rep,
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

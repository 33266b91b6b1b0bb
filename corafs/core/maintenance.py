"""Maintenance of what is stored: the one owner of the re-encoding lease and of the order
"re-encode, then repack", so that head-first encoding (core/headfirst.py, core/lineage.py) and
repack/gc (core/gc.py) need nothing of each other.

* ``reencode``: run the queued head-first jobs, then rewrite the packs they left mostly
  superseded (the space of old keyframes comes back without a manual gc).
* ``repack`` / gc: run the queued jobs first (what they supersede is dropped too), then repack
  under the same lease, so a repack's copy never brings back an encoding that re-encoding
  replaced meanwhile.
* ``reencode_history``: ``corafs repack --reencode``.
* ``Background``: the queue in a thread of its own (the mount daemon, the Python API).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Optional

from . import gc, headfirst
from .headfirst import HistoryReport, ReencodeReport


@contextlib.contextmanager
def lock(repo, blocking: bool = True):
    """One re-encoder (or repack, or fsck) per repository at a time: the store's lease (a file
    lock locally, a lease object shared by every machine on S3). Yields whether it was taken
    (always, when blocking). Once taken, the index takes in what others re-encoded: a block
    is re-encoded only while it is a keyframe, which must not be judged on a stale view."""
    with repo.store.lease("reencode", blocking) as got:
        if got:
            repo.store.refresh()
        yield got


def reencode(repo, cancel: Optional[threading.Event] = None, repack: bool = True,
             blocking: bool = True) -> ReencodeReport:
    """Remove what killed writers left, run every queued job, then rewrite packs that are
    mostly superseded encodings. ``cancel`` stops between blocks (the job stays queued).
    Without ``blocking``, returns at once when another process holds the lease (it runs the
    queue)."""
    rep = ReencodeReport()
    t0 = time.perf_counter()
    with lock(repo, blocking) as got:
        if not got:
            return rep
        repo.store.clean_temporaries()   # maintenance cleans up even when it writes nothing
        done = headfirst.run_jobs(repo, rep, cancel)
        if done and repack and rep.blocks + rep.upgraded + rep.compressed:
            gc.repack(repo, collect=False, grace=0.0, min_waste=repo.tuning.repack_waste,
                      consolidate=False)
    rep.seconds = time.perf_counter() - t0
    return rep


def repack(repo, collect: bool = False, grace: Optional[float] = None, dry_run: bool = False,
           expire_reflog: Optional[float] = None,
           on_progress: Optional[Callable[[int], None]] = None) -> "gc.GcReport":
    """``corafs repack`` / ``corafs gc``: the queued re-encoding first, then the repack."""
    if not dry_run:
        reencode(repo, repack=False)
    with lock(repo):
        return gc.repack(repo, collect, grace, dry_run, expire_reflog, on_progress)


def reencode_history(repo, cancel: Optional[threading.Event] = None) -> HistoryReport:
    """Bring a repository's whole history to the current encoding scheme (``corafs repack
    --reencode``): a repository written by an older corafs (runs closed a version early,
    second keyframes) or with forward deltas (``head_first=False``) is re-encoded as if each
    of its commits had been made now.

    Every delta block of the history is first written whole (a newer copy of the same object:
    every version reads throughout), then one job per commit of each branch's first-parent
    history is queued, oldest first, and the queue runs as after commits. Each step lands in
    packs of its own before the next begins; killed midway, what is queued runs with the next
    command. Needs room for the history stored whole until the jobs and the repack that
    follows have run."""
    rep = HistoryReport()
    histories = headfirst.history(repo)
    with lock(repo):
        reset = headfirst.write_history_whole(repo, histories, cancel)
    if reset is None:
        return rep
    rep.reset = reset
    rep.commits = headfirst.queue_history(repo, histories)
    rep.reencode = reencode(repo, cancel=cancel)
    return rep


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
                self.last = reencode(self.repo, cancel=self._stop)
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

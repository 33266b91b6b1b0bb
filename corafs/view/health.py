"""What a mount's background work is failing at, where other processes can read it.

The mount daemon commits, ingests and re-encodes in background tasks that no user is watching.
When one fails again and again (a full disk, refs on a read-only filesystem, a broken
dependency), the user must learn it from ``corafs status`` and ``corafs umount``, not from a
log file, and the log must not repeat the same traceback every second. ``Health`` keeps one
record per task in ``<state>/staging/health.json`` (rewritten atomically after each failed
attempt and at recovery): when it started failing, why, how often, and when it recovered.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Optional

FILE = "health.json"

#: how a task's failure reads in ``corafs status``
WHAT = {"commit": "commits are", "ingest": "storing written files is",
        "reencode": "re-encoding of history is", "refresh": "refreshing branches is"}


def _what(task: str) -> tuple[str, str]:
    """(subject, verb) of a task's line."""
    subject, _, verb = WHAT.get(task, f"{task} is").rpartition(" ")
    return subject, verb

#: a failing task logs a one-line reminder at most this often after its first traceback
REMIND_SECONDS = 300.0


def _kind(exc: BaseException) -> str:
    """What makes two failures the same for the log: the error and its errno, not the file
    name or the temporary name it happened to hit."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}:{exc.errno}"
    return f"{type(exc).__name__}:{re.sub(r'[0-9a-f]{6,}|[0-9]+', '#', str(exc))}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M", time.localtime(t))


class Health:
    """The daemon's side: ``failed`` after each failed attempt, ``ok`` after each success."""

    def __init__(self, staging_root: str):
        self.path = os.path.join(staging_root, FILE)
        self.tasks: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._reminded: dict[str, float] = {}
        try:
            os.unlink(self.path)           # a new mount starts with a clean record
        except FileNotFoundError:
            pass

    def failed(self, task: str, exc: BaseException) -> bool:
        """Record a failed attempt. True when this failure deserves its traceback in the log:
        the first of a streak, or one of another kind than the last (``_kind``)."""
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        now = time.time()
        with self._lock:
            r = self.tasks.get(task)
            fresh = r is None or r.get("until") is not None
            if fresh:
                r = self.tasks[task] = {"since": now, "count": 0, "reason": reason,
                                        "until": None}
            kind = _kind(exc)
            changed = r.get("kind") != kind
            r["kind"] = kind
            r["count"] += 1
            r["reason"] = reason
            r["last"] = now
            self._write()                  # a small file, once per attempt (about 1/s)
            if fresh or changed:
                self._reminded[task] = now
                return True
            return False

    def remind(self, task: str) -> Optional[str]:
        """A one-line reminder for the log, at most every REMIND_SECONDS while failing."""
        now = time.time()
        with self._lock:
            r = self.tasks.get(task)
            if r is None or r.get("until") is not None:
                return None
            if now - self._reminded.get(task, 0.0) < REMIND_SECONDS:
                return None
            self._reminded[task] = now
            return (f"{_what(task)[0]} still failing ({r['count']} attempts since "
                    f"{_clock(r['since'])}): {r['reason']}")

    def ok(self, task: str) -> bool:
        """Record a success; True when it ends a streak of failures."""
        with self._lock:
            r = self.tasks.get(task)
            if r is None or r.get("until") is not None:
                return False
            r["until"] = time.time()
            self._write()
            return True

    def _write(self) -> None:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.tasks, f)
            os.replace(tmp, self.path)
        except OSError:
            pass                            # the log still has it


def read(staging_root: str) -> dict[str, dict]:
    try:
        with open(os.path.join(staging_root, FILE)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def failing_lines(staging_root: str, mounted: bool = True) -> list[str]:
    """``corafs status``: the tasks failing now; ``mounted`` False: the record a mount left
    when it ended (a crash, or an unmount while failing), said in the past tense."""
    out = []
    for task, r in sorted(read(staging_root).items()):
        if r.get("until") is None:
            subject, verb = _what(task)
            if mounted:
                out.append(f"failing  {subject} {verb} failing since {_clock(r['since'])} "
                           f"({r['count']} attempts): {r['reason']}")
            else:
                verb = "were" if verb == "are" else "was"
                out.append(f"failing  {subject} {verb} failing when the last mount ended "
                           f"(since {_clock(r['since'])}, {r['count']} attempts): "
                           f"{r['reason']}")
    return out


def history_lines(staging_root: str) -> list[str]:
    """``corafs umount``: every task that failed during the mount, recovered or not."""
    out = []
    for task, r in sorted(read(staging_root).items()):
        what = _what(task)[0]
        if r.get("until") is None:
            out.append(f"{what} failed from {_clock(r['since'])} until unmount "
                       f"({r['count']} attempts): {r['reason']}")
        else:
            out.append(f"{what} failed from {_clock(r['since'])} to {_clock(r['until'])} "
                       f"({r['count']} attempts), then succeeded: {r['reason']}")
    return out

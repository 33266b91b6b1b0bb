"""The one harness every benchmark runs on: where it works, how it drops caches and times, how
it runs corafs and mounts, and how it reports.

* ``workdir(name)``: a scratch directory under ``$BENCH_DIR`` (else the system's temporary
  directory), removed at the end unless ``BENCH_KEEP=1``.
* ``drop_caches()``: sync and drop the page cache (root only; says so once when it cannot).
* ``corafs(*args)``: the real command in a subprocess; its stdout, or an error that shows its
  stderr. ``mounted(repo, mnt, *opts)``: a real mount for the length of a ``with``.
* ``cat(path)``, ``timed(fn)``, ``best(fn, n)``, ``median(fn, n)``: timers (perf_counter).
* ``Report``: every number a benchmark measures is a row (what, value, unit; its baseline and
  their ratio where it has one; the aim). ``Report.print()`` shows them as a table and
  ``Report.save()`` appends them as JSON lines to ``$BENCH_OUT`` (default
  ``benchmarks/results.jsonl``), each stamped with the commit, the machine and the time, so
  runs can be compared across commits and machines.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


# -- where ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def workdir(name: str):
    d = tempfile.mkdtemp(prefix=f"corafs-bench-{name}-", dir=os.environ.get("BENCH_DIR"))
    try:
        yield d
    finally:
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(d, ignore_errors=True)


def checkpoints_dir() -> str:
    """Where the real fine-tuning runs (transformer_run.py) are cached between benchmarks."""
    return os.environ.get("BENCH_CKPTS") or os.path.join(tempfile.gettempdir(), "corafs-ckpts")


# -- caches and timers ----------------------------------------------------------------------------
_warned = []


def drop_caches() -> bool:
    """Sync and drop the page cache, so the next read comes from the disk. False (and one
    warning) where that is not allowed: the "cold" numbers are then warm."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        if not _warned:
            _warned.append(True)
            print("(cannot drop caches: not root? cold numbers below are warm)", file=sys.stderr)
        return False


def cat(path) -> float:
    """Seconds to read a file front to back in 1 MiB reads."""
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t


def timed(fn: Callable, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def best(fn: Callable, repeat: int = 3) -> float:
    return min(timed(fn)[0] for _ in range(repeat))


def median(fn: Callable, repeat: int = 3) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeat))


def timed_load(path, mmap: bool) -> float:
    """Seconds for torch.load (weights_only) plus touching every tensor, in a fresh process."""
    code = ("import sys, time, torch\n"
            "t = time.perf_counter()\n"
            "sd = torch.load(sys.argv[1], weights_only=True, mmap=sys.argv[2] == '1')\n"
            "s = sum(float(v.float().sum()) for v in sd.values())\n"
            "print(time.perf_counter() - t)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path), "1" if mmap else "0"],
                       capture_output=True, text=True, check=True)
    return float(p.stdout.strip())


# -- corafs ---------------------------------------------------------------------------------------
def corafs(*args, env: Optional[dict] = None) -> str:
    """Run the real ``corafs`` command; its stdout. A failure raises with its stderr."""
    p = subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], capture_output=True,
                       text=True, env=None if env is None else {**os.environ, **env})
    if p.returncode:
        raise RuntimeError(f"corafs {' '.join(map(str, args))} failed ({p.returncode}):\n"
                           f"{p.stderr.strip()}")
    return p.stdout


class Mounted:
    """A running mount: its path (``f"{m}/main/..."`` works), how long ``corafs mount`` took
    to be ready, the daemon's pid, its read counters and its peak memory."""

    def __init__(self, path: str, ready: float):
        self.path, self.ready = path, ready
        self.pid = int(os.getxattr(path, "user.corafs.pid"))

    def __str__(self) -> str:
        return self.path

    __fspath__ = __str__

    def stats(self) -> dict[str, int]:
        raw = os.getxattr(self.path, "user.corafs.stats").decode()
        return {k: int(v) for k, v in (kv.split("=") for kv in raw.split())}

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
        return 0.0


@contextlib.contextmanager
def mounted(repo, mnt, *opts):
    """A real mount of ``repo`` at ``mnt`` (made if missing) for the length of the block
    (a :class:`Mounted`); unmounted (committing what was written) at the end, lazily if the
    block failed."""
    os.makedirs(mnt, exist_ok=True)
    t = time.perf_counter()
    corafs("mount", repo, mnt, *opts)
    ok = False
    try:
        yield Mounted(str(mnt), time.perf_counter() - t)
        ok = True
    finally:
        if ok:
            corafs("umount", mnt)
        else:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def tree_bytes(path) -> int:
    """Bytes of the files under ``path`` (what ``du -sb`` counts, less directories)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


# -- reporting ------------------------------------------------------------------------------------
def stamp() -> dict:
    """What a row is measured on: the commit (with ``+dirty`` for uncommitted changes), the
    machine (host, CPU, cores, memory, kernel) and when."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", HERE, *a], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = 0
    return {"commit": commit, "host": socket.gethostname(), "cpu": cpu or platform.processor(),
            "cores": os.cpu_count(), "mem_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class Report:
    """The rows of one benchmark run."""

    def __init__(self, bench: str, **params):
        self.bench = bench
        self.params = params
        self.rows: list[dict] = []

    def row(self, what: str, value: float, unit: str = "", *, baseline: Optional[float] = None,
            baseline_what: str = "", ratio: Optional[float] = None, aim: str = "",
            **extra) -> dict:
        """One measured number. ``ratio`` defaults to value / baseline when there is one."""
        if ratio is None and baseline:
            ratio = value / baseline
        r = {"what": what, "value": value, "unit": unit}
        if baseline is not None:
            r["baseline"] = baseline
            r["baseline_what"] = baseline_what
        if ratio is not None:
            r["ratio"] = ratio
        if aim:
            r["aim"] = aim
        r.update(extra)
        self.rows.append(r)
        return r

    def print(self, title: str = "") -> None:
        if title:
            print(title)
        w = max([len(r["what"]) for r in self.rows] + [20])
        print(f"{'measure':<{w}} {'value':>12} {'unit':<6} {'baseline':>12} {'ratio':>8}  aim")
        for r in self.rows:
            b = f"{r['baseline']:12.4g}" if "baseline" in r else f"{'':12}"
            q = f"{r['ratio']:8.3f}" if "ratio" in r else f"{'':8}"
            print(f"{r['what']:<{w}} {r['value']:12.4g} {r['unit']:<6} {b} {q}  "
                  f"{r.get('aim', '')}")

    def save(self, path: Optional[str] = None) -> str:
        path = path or os.environ.get("BENCH_OUT") or os.path.join(HERE, "results.jsonl")
        s = stamp()
        with open(path, "a") as f:
            for r in self.rows:
                f.write(json.dumps({"bench": self.bench, **s, "params": self.params, **r}) + "\n")
        print(f"({len(self.rows)} rows appended to {path})")
        return path

    def done(self, title: str = "") -> None:
        self.print(title)
        self.save()

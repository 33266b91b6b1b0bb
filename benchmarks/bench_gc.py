"""Repack and gc (issue 9, item 2), measured in one run:

* a branch that alone holds ~100 MB of tensors is deleted: share of its stored bytes that
  `corafs gc --expire-reflog now` returns to the file system (aim >= 95%);
* 1,000 one-commit packs: packs before/after `corafs repack`, and `ls -l @history/main`
  through a mount of that repository before and after (aim < 0.5 s);
* gc time.

  python benchmarks/bench_gc.py [--commits 1000] [--mib 100]
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import safetensors.numpy

from corafs import Repository

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, corafs, mounted, timed, workdir  # noqa: E402


def objects_bytes(repo):
    d = os.path.join(repo, "objects")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if f.endswith((".h5", ".idx")))


def ls_history(repo, mnt) -> float:
    with mounted(repo, mnt) as m:
        return timed(subprocess.run, ["ls", "-l", f"{m}/@history/main"], check=True,
                     stdout=subprocess.DEVNULL)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--mib", type=int, default=100)
    a = ap.parse_args()
    rep = Report("gc", commits=a.commits, mib=a.mib)
    with workdir("gc") as work:
        repo, mnt = os.path.join(work, "repo"), os.path.join(work, "mnt")
        corafs("init", repo)
        rng = np.random.default_rng(0)
        base = os.path.join(work, "base.safetensors")
        safetensors.numpy.save_file({"w": rng.standard_normal(1 << 20, dtype=np.float32)}, base)
        corafs("commit", repo, base)
        corafs("branch", repo, "exp")
        big = os.path.join(work, "exp.safetensors")
        n = (a.mib << 20) // 4 // 8
        safetensors.numpy.save_file({f"t{i}": rng.standard_normal(n, dtype=np.float32)
                                     for i in range(8)}, big)
        before = objects_bytes(repo)
        corafs("commit", repo, big, "-b", "exp")
        branch_bytes = objects_bytes(repo) - before
        corafs("branch", repo, "-d", "exp")
        total = objects_bytes(repo)
        t_gc, _ = timed(corafs, "gc", repo, "--grace", "0", "--expire-reflog", "now")
        freed = total - objects_bytes(repo)
        rep.row("gc: stored bytes of a deleted branch freed", freed / 2**20, "MiB",
                baseline=branch_bytes / 2**20, baseline_what="stored by the branch",
                aim=">= 0.95")
        rep.row("gc time", t_gc, "s")

        with Repository(repo) as r:
            for i in range(a.commits):
                r.commit_changes("main", {f"step/{i % 50}": {"kind": "link",
                                                            "target": str(i)}}, f"c{i}")
            packs_before = len(r.store.packs())
        t_before = ls_history(repo, mnt)
        t_repack, _ = timed(corafs, "repack", repo, "--grace", "0")
        with Repository(repo) as r:
            packs_after = len(r.store.packs())
        t_after = ls_history(repo, mnt)
        rep.row(f"packs after repack of {a.commits} one-commit packs", packs_after, "packs",
                baseline=packs_before, baseline_what="packs before")
        rep.row("repack time", t_repack, "s")
        rep.row(f"ls -l @history/main ({a.commits + 3} commits) after repack", t_after, "s",
                baseline=t_before, baseline_what="before repack", aim="< 0.5 s")
    rep.done()


if __name__ == "__main__":
    main()

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
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import safetensors.numpy

from corafs import Repository


def corafs(*args):
    return subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


def objects_bytes(repo):
    d = os.path.join(repo, "objects")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if f.endswith((".h5", ".idx")))


def ls_history(repo, mnt) -> float:
    corafs("mount", repo, mnt)
    try:
        t0 = time.perf_counter()
        subprocess.run(["ls", "-l", f"{mnt}/@history/main"], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        corafs("umount", mnt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--mib", type=int, default=100)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="corafs-bench-gc-", dir=os.environ.get("TMPDIR"))
    try:
        repo, mnt = os.path.join(work, "repo"), os.path.join(work, "mnt")
        os.makedirs(mnt)
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
        t0 = time.perf_counter()
        corafs("gc", repo, "--grace", "0", "--expire-reflog", "now")
        t_gc = time.perf_counter() - t0
        freed = total - objects_bytes(repo)
        print(f"deleted branch holding {branch_bytes / 2**20:.1f} MiB stored "
              f"({a.mib} MiB of tensors): gc freed {freed / 2**20:.1f} MiB = "
              f"{freed / branch_bytes:.1%} (aim >= 95%) in {t_gc:.2f} s")

        with Repository(repo) as r:
            for i in range(a.commits):
                r.commit_changes("main", {f"step/{i % 50}": {"kind": "link",
                                                            "target": str(i)}}, f"c{i}")
            packs_before = len(r.store.packs())
        t_before = ls_history(repo, mnt)
        t0 = time.perf_counter()
        corafs("repack", repo, "--grace", "0")
        t_repack = time.perf_counter() - t0
        with Repository(repo) as r:
            packs_after = len(r.store.packs())
        t_after = ls_history(repo, mnt)
        print(f"{a.commits} one-commit packs: {packs_before} packs -> {packs_after} after "
              f"repack ({t_repack:.2f} s)")
        print(f"ls -l @history/main ({a.commits + 3} commits): before {t_before:.3f} s, after "
              f"{t_after:.3f} s (aim < 0.5 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

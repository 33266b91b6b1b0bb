"""Cold torch.load through the mount against local disk, in one run (issue 9, item 4).

A ~512 MB state dict (.pth) is committed twice (a fine-tune: the head stored whole, the first
version as a delta against it);
then, after drop_caches and on a fresh mount each time: torch.load of the head and of the first
version through the mount, and of the same bytes from local disk, with ``mmap=False`` and
``mmap=True``. Each pair (local, then mount) runs ``--reps`` times, interleaved, and the rows
are medians: one cold local read on this VM swings by 1.5x between runs, which a single sample
turns into the ratio's noise.

  python benchmarks/bench_torch_load.py [--mib 512] [--reps 3] [--mmap-only | --no-mmap]
"""
import argparse
import os
import shutil
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Report, corafs, drop_caches, mounted, timed_load, workdir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--mmap-only", action="store_true")
    g.add_argument("--no-mmap", action="store_true")
    a = ap.parse_args()
    modes = [False, True]
    if a.mmap_only:
        modes = [True]
    elif a.no_mmap:
        modes = [False]
    rep = Report("torch_load", mib=a.mib, reps=a.reps)
    with workdir("tl") as work:
        torch.manual_seed(0)
        n = a.mib // 16
        v1 = {f"layer{i}.weight": torch.randn(2048, 2048) * 0.02 for i in range(n)}
        v2 = {k: t + torch.randn_like(t) * 1e-4 for k, t in v1.items()}
        p1, p2 = os.path.join(work, "v1.pth"), os.path.join(work, "v2.pth")
        torch.save(v1, p1)
        torch.save(v2, p2)
        repo, mnt = os.path.join(work, "repo"), os.path.join(work, "mnt")
        corafs("init", repo)
        for p in (p1, p2):
            shutil.copy(p, os.path.join(work, "model.pth"))
            corafs("commit", repo, os.path.join(work, "model.pth"))
        for mm in modes:
            for label, local, spec in (("head", p2, "main"), ("first (history)", p1, "main~1")):
                locs, mnts = [], []
                for _ in range(a.reps):
                    drop_caches()
                    locs.append(timed_load(local, mm))
                    with mounted(repo, mnt) as m:
                        drop_caches()
                        mnts.append(timed_load(os.path.join(m, spec, "model.pth"), mm))
                rep.row(f"torch.load{' (mmap=True)' if mm else ''} of the {label} through a "
                        f"fresh mount, cold", statistics.median(mnts), "s",
                        baseline=statistics.median(locs), baseline_what="local disk, cold",
                        aim="ratio <= 1.3" if spec == "main" else "ratio <= 1.5",
                        mount_s=[round(x, 3) for x in mnts], local_s=[round(x, 3) for x in locs])
    rep.done(f"torch.load of a {a.mib} MB state dict, cold (medians of {a.reps})")


if __name__ == "__main__":
    main()

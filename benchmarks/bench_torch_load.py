"""Cold torch.load through the mount against local disk, in one run (issue 9, item 4).

A ~512 MB state dict (.pth) is committed twice (a fine-tune: the head stored whole, the first
version as a delta against it);
then, after drop_caches and on a fresh mount each time: torch.load of the head and of the first
version through the mount, and of the same bytes from local disk. Prints times and ratios.

  python benchmarks/bench_torch_load.py [--mib 512] [--mmap]
"""
import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Report, corafs, drop_caches, mounted, timed_load, workdir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--mmap", action="store_true")
    a = ap.parse_args()
    rep = Report("torch_load", mib=a.mib, mmap=a.mmap)
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
        for label, local, spec in (("head", p2, "main"), ("first (history)", p1,
                                                                    "main~1")):
            drop_caches()
            t_local = timed_load(local, a.mmap)
            with mounted(repo, mnt) as m:
                drop_caches()
                t_mount = timed_load(os.path.join(m, spec, "model.pth"), a.mmap)
            rep.row(f"torch.load of the {label} through a fresh mount, cold", t_mount, "s",
                    baseline=t_local, baseline_what="local disk, cold", aim="ratio <= 1.5")
    rep.done(f"torch.load{' (mmap=True)' if a.mmap else ''} of a {a.mib} MB state dict, cold")


if __name__ == "__main__":
    main()

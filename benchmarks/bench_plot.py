"""``corafs plot`` of 30 commits of a ~110 MB model (issue 25) against reading those 30
versions once through the mount, in one run.

A real fine-tuning run (transformer_run.py: 31 checkpoints of a 27M-parameter transformer, 10
AdamW steps apart, fp32 safetensors) is committed in order, each version with its step in the
commit's metadata, re-encoded head-first as the CLI does. Then, cold (caches dropped, fresh
processes): `cat` of the 30 newest versions through a fresh mount (main, main~1, ...,
main~29), against `corafs plot` of the same 30 commits with its cache emptied, and the same
plot again (cached).

  python benchmarks/bench_plot.py [--ckpts DIR] [--kind fp32]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Report, cat, checkpoints_dir, corafs, drop_caches, mounted,  # noqa: E402
                     timed, workdir)
from transformer_run import generate  # noqa: E402

from corafs import Repository  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=checkpoints_dir())
    ap.add_argument("--kind", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--commits", type=int, default=30)
    a = ap.parse_args()
    series = generate(a.ckpts, 31, 10)[-a.commits:]
    rep = Report("plot", kind=a.kind, commits=a.commits)
    with workdir("plot") as work:
        repo = os.path.join(work, "repo")
        Repository.init(repo).close()
        with Repository(repo) as r:
            r.background_reencode = False
            for i, files in enumerate(series):
                r.commit("main", {"model.safetensors": files[f"{a.kind}/model.safetensors"]},
                         meta={"step": (i + 1) * 10})
                r.reencode()
        size = os.path.getsize(series[-1][f"{a.kind}/model.safetensors"])
        specs = ["main"] + [f"main~{k}" for k in range(1, a.commits)]

        def read_all(m):
            return sum(cat(os.path.join(m, s, "model.safetensors")) for s in specs)

        with mounted(repo, os.path.join(work, "mnt")) as m:
            drop_caches()
            t_mount = read_all(m)
        out = os.path.join(work, "run.png")
        drop_caches()
        t_plot, stdout = timed(corafs, "plot", repo, "main", "-o", out)
        t_cached, _ = timed(corafs, "plot", repo, "main", "-o", out)
        rep.row(f"corafs plot of {a.commits} commits, cold, empty cache", t_plot, "s",
                baseline=t_mount, baseline_what=f"cat of the {a.commits} versions through a "
                "fresh mount, cold", aim="ratio < 1", summary=stdout.strip())
        rep.row("corafs plot again (cached)", t_cached, "s", baseline=t_mount,
                baseline_what="the same reads")
        rep.row("mount read throughput over the 30 versions", a.commits * size / 1e6 / t_mount,
                "MB/s")
    rep.done(f"{a.commits} commits of a {size / 1e6:.0f} MB {a.kind} model")


if __name__ == "__main__":
    main()

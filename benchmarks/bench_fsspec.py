"""fsspec read of a ~1 GiB checkpoint through the ``corafs`` protocol against a local read of
the same file (issue 24: aim >= 0.5x), in one run, cold (caches dropped, fresh processes;
imports outside the timer, opening the repository inside it).

  python benchmarks/bench_fsspec.py [--mib 1024]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, drop_caches, workdir  # noqa: E402

from corafs import Repository  # noqa: E402

READ = """
import sys, time, fsspec
fsspec.get_filesystem_class(sys.argv[1].split(":")[0])   # imports (corafs, numpy) not timed
t = time.perf_counter()
with fsspec.open(sys.argv[1], "rb", **({"repo": sys.argv[2]} if len(sys.argv) > 2 else {})) as f:
    while f.read(1 << 22):
        pass
print(time.perf_counter() - t)
"""


def timed_read(url: str, repo: str = None) -> float:
    drop_caches()
    p = subprocess.run([sys.executable, "-c", READ, url] + ([repo] if repo else []),
                       capture_output=True, text=True, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import safetensors.numpy
    rep = Report("fsspec", mib=a.mib, repeat=a.repeat)
    with workdir("fsspec") as work:
        rng = np.random.default_rng(0)
        base = {f"layer{i}.weight": rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02
                for i in range(a.mib // 16)}
        tuned = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 1e-4
                 for k, v in base.items()}
        paths = []
        for i, sd in enumerate((base, tuned)):
            p = os.path.join(work, f"v{i}.safetensors")
            safetensors.numpy.save_file(sd, p)
            paths.append(p)
        del base, tuned
        repo = os.path.join(work, "repo")
        Repository.init(repo).close()
        with Repository(repo) as r:
            r.background_reencode = False
            for p in paths:
                r.commit("main", {"model.safetensors": p})
                r.reencode()
        size = os.path.getsize(paths[1])
        def med(*args):
            return statistics.median(timed_read(*args) for _ in range(a.repeat))
        t_local = med("file://" + paths[1])
        t_head = med("corafs://main/model.safetensors", repo)
        t_old = med("corafs://main~1/model.safetensors", repo)
        mb = size / 1e6
        rep.row("fsspec read of the head (corafs://main/...)", mb / t_head, "MB/s",
                baseline=mb / t_local, baseline_what="fsspec read of the local file",
                aim="ratio >= 0.5")
        rep.row("fsspec read of the version before (a reverse delta)", mb / t_old, "MB/s",
                baseline=mb / t_local, baseline_what="fsspec read of the local file")
    rep.done(f"{size / 2**20:.0f} MiB fp32 safetensors, cold, medians of {a.repeat}")


if __name__ == "__main__":
    main()

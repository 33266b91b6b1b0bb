"""DCP checkpoints in corafs (issue 24), side by side in one run, on a real fine-tuning run
(transformer_run.py: a 27M-parameter transformer, two consecutive checkpoints, fp32 and bf16):

* what the second DCP save costs stored (after head-first re-encoding), against what the same
  state costs as one ``.pth`` (aim <= 1.05x);
* ``dcp.load`` of the saved checkpoint through a fresh mount against the same directory on local
  disk, cold (aim <= 1.5x).

One process (``no_dist``): one rank's ``.distcp`` holds every tensor.

  python benchmarks/bench_dcp.py [--ckpts DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, checkpoints_dir, drop_caches, mounted, workdir  # noqa: E402
from transformer_run import generate  # noqa: E402

from corafs import Repository  # noqa: E402

LOAD = """
import sys, time, warnings, torch, safetensors.torch
import torch.distributed.checkpoint as dcp
warnings.simplefilter("ignore")
sd = {k: torch.zeros_like(v) for k, v in safetensors.torch.load_file(sys.argv[2]).items()}
t = time.perf_counter()
dcp.load(sd, checkpoint_id=sys.argv[1], no_dist=True)
print(time.perf_counter() - t)
"""


def stored(repo: str) -> int:
    with Repository(repo) as r:
        r.reencode()
        st = r.stats()
        return st.stored_bytes + st.meta_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=checkpoints_dir())
    a = ap.parse_args()
    import safetensors.torch
    import torch
    import torch.distributed.checkpoint as dcp
    series = generate(a.ckpts, 10)[-2:]
    rep = Report("dcp")
    with workdir("dcp") as work:
        for kind in ("fp32", "bf16"):
            src = [s[f"{kind}/model.safetensors"] for s in series]
            sizes = {}
            for fmt in ("dcp", "pth"):
                repo = os.path.join(work, f"repo-{kind}-{fmt}")
                Repository.init(repo).close()
                after = []
                for i, p in enumerate(src):
                    sd = safetensors.torch.load_file(p)
                    out = os.path.join(work, f"{kind}-{fmt}-{i}")
                    if fmt == "dcp":
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            dcp.save(sd, checkpoint_id=out, no_dist=True)
                        files = {f"ckpt/{n}": os.path.join(out, n) for n in os.listdir(out)}
                    else:
                        os.makedirs(out)
                        torch.save(sd, os.path.join(out, "model.pth"))
                        files = {"model.pth": os.path.join(out, "model.pth")}
                    with Repository(repo) as r:
                        r.background_reencode = False
                        r.commit("main", files)
                    after.append(stored(repo))
                sizes[fmt] = after[1] - after[0]
            rep.row(f"{kind}: second save's stored cost, DCP", sizes["dcp"] / 1e6, "MB",
                    baseline=sizes["pth"] / 1e6, baseline_what="the same state as one .pth",
                    aim="ratio <= 1.05")
            local = os.path.join(work, f"{kind}-dcp-1")
            repo = os.path.join(work, f"repo-{kind}-dcp")

            def load(path):
                drop_caches()
                p = subprocess.run([sys.executable, "-c", LOAD, path, src[1]], check=True,
                                   capture_output=True, text=True)
                return float(p.stdout.strip().splitlines()[-1])
            t_local = min(load(local) for _ in range(2))
            times = []
            for _ in range(2):
                with mounted(repo, os.path.join(work, "mnt")) as m:
                    times.append(load(os.path.join(m, "main", "ckpt")))
            rep.row(f"{kind}: dcp.load through a fresh mount, cold", min(times), "s",
                    baseline=t_local, baseline_what="the same directory on local disk, cold",
                    aim="ratio <= 1.5")
    rep.done("two consecutive checkpoints of a real fine-tune; one rank (no_dist)")


if __name__ == "__main__":
    main()

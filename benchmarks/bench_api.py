"""Loading without a mount and committing, side by side with local disk in one run, on a real
fine-tuning run (benchmarks/transformer_run.py: 10 checkpoints of a 24M-parameter transformer,
fp32 and the same run cast to bf16, each as model.pth + model.safetensors).

For each series, committed in order with the real `corafs commit` (head-first re-encoding of
the previous version included, as the command does it):
  commit        MB/s of `corafs commit` per checkpoint directory (median)      aim >= 300 MB/s
  open head     corafs.open(repo, "main:model.pth").read(), cold, / local read  aim >= 0.5x
  open oldest   the same for main~9 (the deepest history)
  export oldest `corafs export main~9:model.pth` / `cp` of the file, cold       aim >= 0.3x
"Cold" is after drop_caches, in a fresh process (nothing decoded, nothing in the page cache);
each figure is the median of --repeat runs. The issue's 1 GiB aims are read here at the
~100 MB size of this model (benchmarks/bench_speed.py measures a synthetic 1 GiB file).

  python benchmarks/bench_api.py [--out /tmp/corafs-ckpts] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, checkpoints_dir, drop_caches, timed, workdir  # noqa: E402
from transformer_run import generate  # noqa: E402


def timed_cmd(args) -> float:
    return timed(subprocess.run, args, check=True, stdout=subprocess.DEVNULL)[0]


def cold(fn, repeat) -> float:
    """Median seconds of ``fn`` run after drop_caches each time."""
    def once():
        drop_caches()
        return fn()
    return statistics.median(once() for _ in range(repeat))


READ_LOCAL = "import sys,time; t=time.perf_counter(); open(sys.argv[1],'rb').read(); " \
             "print(time.perf_counter()-t)"
READ_OPEN = "import sys,time,corafs; r=corafs.Repository(sys.argv[1]); t=time.perf_counter(); " \
            "f=corafs.open(r, sys.argv[2]); n=len(f.read()); print(time.perf_counter()-t); " \
            "r.close()"


def in_process(code, *args) -> float:
    """Seconds the timed part of ``code`` took in a fresh interpreter (imports not counted)."""
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                       capture_output=True, text=True)
    return float(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=checkpoints_dir())
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    series = generate(a.out, 10)
    cli = [sys.executable, "-m", "corafs"]
    rep = Report("api", repeat=a.repeat)
    with workdir("api") as tmp:
        for kind in ("fp32", "bf16"):
            repo = os.path.join(tmp, f"repo-{kind}")
            subprocess.run(cli + ["init", repo], check=True, stdout=subprocess.DEVNULL)
            rates = []
            for ckpt in series:
                d = os.path.dirname(ckpt[f"{kind}/model.pth"])
                size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
                drop_caches()
                rates.append(size / timed_cmd(cli + ["commit", repo, d + "/", "-m", "ckpt"]) / 1e6)
            head = series[-1][f"{kind}/model.pth"]
            oldest = series[0][f"{kind}/model.pth"]
            mb = os.path.getsize(head) / 1e6
            local = cold(lambda: in_process(READ_LOCAL, head), a.repeat)
            t_head = cold(lambda: in_process(READ_OPEN, repo, "main:model.pth"), a.repeat)
            t_old = cold(lambda: in_process(READ_OPEN, repo, "main~9:model.pth"), a.repeat)
            dest = os.path.join(tmp, "out.pth")

            def cp():
                t = timed_cmd(["cp", oldest, dest])
                os.unlink(dest)
                return t

            def export():
                t = timed_cmd(cli + ["export", repo, "main~9:model.pth", dest])
                os.unlink(dest)
                return t
            t_cp, t_exp = cold(cp, a.repeat), cold(export, a.repeat)
            rep.row(f"{kind}: corafs commit (CLI), per checkpoint dir, median",
                    statistics.median(rates), "MB/s", aim=">= 300 MB/s")
            rep.row(f"{kind}: corafs.open head .pth read, cold", mb / t_head, "MB/s",
                    baseline=mb / local, baseline_what="local read, cold", aim="ratio >= 0.5")
            rep.row(f"{kind}: corafs.open oldest (main~9) .pth read, cold", mb / t_old, "MB/s",
                    baseline=mb / local, baseline_what="local read, cold")
            rep.row(f"{kind}: corafs export of the oldest .pth, cold", mb / t_exp, "MB/s",
                    baseline=mb / t_cp, baseline_what="cp, cold", aim="ratio >= 0.3")
            shutil.rmtree(repo)
    rep.done(f"{os.cpu_count()} cores; cold (drop_caches), medians of {a.repeat}; .pth "
             f"files of {mb:.0f} MB")


if __name__ == "__main__":
    main()

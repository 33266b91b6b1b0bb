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
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import drop_caches  # noqa: E402
from transformer_run import generate  # noqa: E402


def timed_cmd(args) -> float:
    t = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def cold(fn, repeat) -> float:
    out = []
    for _ in range(repeat):
        drop_caches()
        out.append(fn())
    return statistics.median(out)


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
    ap.add_argument("--out", default="/tmp/corafs-ckpts")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    series = generate(a.out, 10)
    cli = [sys.executable, "-m", "corafs"]
    rows = []
    tmp = tempfile.mkdtemp(prefix="corafs-bench-api-", dir=os.environ.get("BENCH_DIR"))
    try:
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
            rows += [
                (kind, "commit (CLI, per checkpoint dir)", f"{statistics.median(rates):.0f} MB/s",
                 "", ">= 300 MB/s"),
                (kind, "corafs.open head .pth read", f"{mb / t_head:.0f} MB/s",
                 f"{local / t_head:.2f}x local ({mb / local:.0f} MB/s)", ">= 0.5x"),
                (kind, "corafs.open oldest .pth read", f"{mb / t_old:.0f} MB/s",
                 f"{local / t_old:.2f}x local", ""),
                (kind, "export oldest .pth (CLI)", f"{mb / t_exp:.0f} MB/s",
                 f"{t_cp / t_exp:.2f}x cp ({mb / t_cp:.0f} MB/s)", ">= 0.3x"),
            ]
            shutil.rmtree(repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{os.cpu_count()} cores; cold (drop_caches), medians of {a.repeat}; .pth files of "
          f"{mb:.0f} MB")
    print(f"{'series':<6} {'what':<34} {'speed':>10}  {'ratio':<30} aim")
    for r in rows:
        print(f"{r[0]:<6} {r[1]:<34} {r[2]:>10}  {r[3]:<30} {r[4]}")


if __name__ == "__main__":
    main()

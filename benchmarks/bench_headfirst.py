"""Head-first encoding against forward deltas (today's baseline) and local disk, in one run
(issue 9).

A real fine-tuning run (a ~27M-parameter GPT-style transformer, 10 checkpoints, fp32 and bf16,
``model.pth`` + ``model.safetensors`` each; benchmarks/transformer_run.py) is committed in order
twice: head-first (the default: new versions stored whole, what they replace re-encoded as
reverse deltas) and forward (``Tuning(head_first=False)``, the encoding before this change).
Then, after drop_caches and on a fresh mount each time, the head and the oldest version are
read through the mount and the same bytes from local disk.

Prints: stored sizes (after repack), commit and re-encode speed, cold and warm ``cat`` ratios,
cold ``torch.load`` (and ``mmap=True``) ratios, and the oldest version's read ratio.

Then today's 1 GiB case: a 1 GiB state dict committed twice, commit and re-encode speed and
cold reads of both versions, head-first against forward.

  python benchmarks/bench_headfirst.py [--kind fp32] [--ckpts /tmp/corafs-ckpts] [--big-mib 1024]
"""
import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Report, cat, checkpoints_dir, drop_caches, mounted,  # noqa: E402
                     timed_load, workdir)
from transformer_run import generate, parameters  # noqa: E402

from corafs import Repository  # noqa: E402
from corafs.config import DEFAULT  # noqa: E402


def commit_series(repo_path, series, kind, tuning):
    Repository.init(repo_path).close()
    t_commit = t_re = 0.0
    with Repository(repo_path, tuning=tuning) as r:
        r.background_reencode = False
        for i, files in enumerate(series):
            t = time.perf_counter()
            r.commit("main", {"model.pth": files[f"{kind}/model.pth"],
                              "model.safetensors": files[f"{kind}/model.safetensors"]},
                     message=f"checkpoint {i}")
            t_commit += time.perf_counter() - t
            t = time.perf_counter()
            r.reencode()
            t_re += time.perf_counter() - t
        r.repack(grace=0)
        st = r.stats()
    return st, t_commit, t_re


def reads(repo, mnt, files_head, files_old, n, reps=3):
    """(label, local seconds, mount seconds) per measurement; cold figures are the median of
    ``reps`` runs (a fresh mount and dropped caches each time: single runs vary by 30%)."""
    rows = []

    def median(fn):
        return statistics.median(fn() for _ in range(reps))

    def cold_local(fn):
        def run():
            drop_caches()
            return fn()
        return median(run)

    def cold_mount(fn):
        def run():
            with mounted(repo, mnt):
                drop_caches()
                return fn()
        return median(run)

    st_head = files_head["model.safetensors"]
    rows.append(("cold cat head .safetensors", cold_local(lambda: cat(st_head)),
                 cold_mount(lambda: cat(os.path.join(mnt, "main", "model.safetensors")))))
    # warm: the kernel's page cache holds both (read twice before timing)
    with mounted(repo, mnt) as m:
        path = os.path.join(m, "main", "model.safetensors")
        cat(path)
        cat(st_head)
        rows.append(("warm cat head .safetensors", min(cat(st_head) for _ in range(3)),
                     min(cat(path) for _ in range(3))))
    for mmap in (False, True):
        rows.append((f"cold torch.load head .pth{' mmap' if mmap else ''}",
                     cold_local(lambda: timed_load(files_head["model.pth"], mmap)),
                     cold_mount(lambda: timed_load(os.path.join(mnt, "main", "model.pth"),
                                                   mmap))))
    rows.append((f"cold cat oldest (main~{n - 1})",
                 cold_local(lambda: cat(files_old["model.safetensors"])),
                 cold_mount(lambda: cat(os.path.join(mnt, f"main~{n - 1}",
                                                     "model.safetensors")))))
    return rows


def big(rep, work, mib):
    """Today's 1 GiB case: a state dict of ``mib`` MiB committed twice (a fine-tune step),
    head-first against forward; commit and re-encode speed, cold cat of head and of head~1."""
    import numpy as np
    import safetensors.numpy
    rng = np.random.default_rng(0)
    n = mib // 16
    v1 = {f"layer{i}.weight": (rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02)
          for i in range(n)}
    v2 = {k: t + rng.standard_normal(t.shape, dtype=np.float32) * 1e-4 for k, t in v1.items()}
    paths = []
    for i, sd in enumerate((v1, v2)):
        p = os.path.join(work, f"v{i}.safetensors")
        safetensors.numpy.save_file(sd, p)
        paths.append(p)
    size = os.path.getsize(paths[-1])
    mnt = os.path.join(work, "mnt")
    def cold_local():
        drop_caches()
        return cat(paths[-1])

    t_local = statistics.median(cold_local() for _ in range(3))
    for label, tuning in (("forward (before)", dataclasses.replace(DEFAULT, head_first=False)),
                          ("head-first", DEFAULT)):
        rp = os.path.join(work, "big-" + label.split()[0])
        Repository.init(rp).close()
        with Repository(rp, tuning=tuning) as r:
            r.background_reencode = False
            r.commit("main", {"model.safetensors": paths[0]})
            r.reencode()
            t = time.perf_counter()
            r.commit("main", {"model.safetensors": paths[1]})
            tc = time.perf_counter() - t
            t = time.perf_counter()
            r.reencode()
            tr = time.perf_counter() - t
        speeds = []
        for spec in ("main", "main~1"):
            times = []
            for _ in range(3):              # median of 3: single cold runs vary by 30%
                with mounted(rp, mnt) as m:
                    drop_caches()
                    times.append(cat(os.path.join(m, spec, "model.safetensors")))
            speeds.append(size / statistics.median(times))
        local = size / t_local
        what = f"{size / 2**30:.2f} GiB, two versions, {label}"
        rep.row(f"{what}: commit of the second", size / 1e6 / tc, "MB/s")
        if tr > 0.05:
            rep.row(f"{what}: re-encode", size / 1e6 / tr, "MB/s")
        rep.row(f"{what}: cold cat of head through a mount", speeds[0] / 1e6, "MB/s",
                baseline=local / 1e6, baseline_what="local disk, cold (median of 3)")
        rep.row(f"{what}: cold cat of head~1 through a mount", speeds[1] / 1e6, "MB/s",
                baseline=local / 1e6, baseline_what="local disk, cold (median of 3)")
        shutil.rmtree(rp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--ckpts", default=checkpoints_dir())
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--no-reads", action="store_true", help="sizes and speeds only")
    ap.add_argument("--big-mib", type=int, default=1024,
                    help="size of the single-file case (0: skip it)")
    a = ap.parse_args()
    series = generate(a.ckpts, a.checkpoints)
    rep = Report("headfirst", kind=a.kind, checkpoints=a.checkpoints, big_mib=a.big_mib)
    with workdir("hf") as work:
        run(rep, a, series, work)
    rep.done(f"{parameters() / 1e6:.1f}M-parameter transformer, {len(series)} checkpoints, "
             f"{a.kind}, model.pth + model.safetensors; read ratios are mount time / local time")


def run(rep, a, series, work):
    raw = sum(os.path.getsize(f[f"{a.kind}/model.{e}"]) for f in series
              for e in ("pth", "safetensors"))
    res = {}
    for label, tuning in (("forward (before)", dataclasses.replace(DEFAULT,
                                                                  head_first=False)),
                          ("head-first", DEFAULT)):
        rp = os.path.join(work, label.split()[0])
        res[label] = (rp, *commit_series(rp, series, a.kind, tuning))
    (_, s_f, _, _) = res["forward (before)"]
    fwd = (s_f.stored_bytes + s_f.meta_bytes) / 1e6
    for label, (_rp, st, tc, tr) in res.items():
        rep.row(f"{label}: stored", (st.stored_bytes + st.meta_bytes) / 1e6, "MB",
                baseline=fwd, baseline_what="forward encoding", raw_mb=raw / 1e6,
                disk_mb=st.disk_bytes / 1e6, max_depth=st.max_depth,
                head_depth=st.head_max_depth)
        rep.row(f"{label}: commit", raw / 1e6 / tc, "MB/s")
        if tr > 0.05:
            rep.row(f"{label}: re-encode", raw / 1e6 / tr, "MB/s")
    if a.no_reads:
        return
    head = {"model.pth": series[-1][f"{a.kind}/model.pth"],
            "model.safetensors": series[-1][f"{a.kind}/model.safetensors"]}
    old = {"model.safetensors": series[0][f"{a.kind}/model.safetensors"]}
    mnt = os.path.join(work, "mnt")
    aims = {"cold cat head": "<= 1.67", "warm cat head": "<= 1.25",
            "cold torch.load": "<= 1.3", "cold cat oldest": "<= 4.0"}
    rows_f = reads(res["forward (before)"][0], mnt, head, old, len(series))
    rows_h = reads(res["head-first"][0], mnt, head, old, len(series))
    for (label, tl, tf), (_l, tl2, th) in zip(rows_f, rows_h):
        tl = min(tl, tl2)
        aim = next((v for k, v in aims.items() if label.startswith(k)), "")
        rep.row(f"{label}, forward encoding", tf, "s", baseline=tl,
                baseline_what="local disk")
        rep.row(f"{label}, head-first", th, "s", baseline=tl, baseline_what="local disk",
                aim=f"ratio {aim}" if aim else "")
    if a.big_mib:
        big(rep, work, a.big_mib)


if __name__ == "__main__":
    main()

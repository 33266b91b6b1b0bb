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
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import cat, corafs, drop_caches, timed_load  # noqa: E402
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
            corafs("mount", repo, mnt)
            try:
                drop_caches()
                return fn()
            finally:
                corafs("umount", mnt)
        return median(run)

    st_head = files_head["model.safetensors"]
    rows.append(("cold cat head .safetensors", cold_local(lambda: cat(st_head)),
                 cold_mount(lambda: cat(os.path.join(mnt, "main", "model.safetensors")))))
    # warm: the kernel's page cache holds both (read twice before timing)
    corafs("mount", repo, mnt)
    try:
        path = os.path.join(mnt, "main", "model.safetensors")
        cat(path)
        cat(st_head)
        rows.append(("warm cat head .safetensors", min(cat(st_head) for _ in range(3)),
                     min(cat(path) for _ in range(3))))
    finally:
        corafs("umount", mnt)
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


def big(work, mib):
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
    os.makedirs(mnt, exist_ok=True)
    print(f"\n{size / 2**30:.2f} GiB state dict, two versions (fp32, a fine-tune step apart)")
    print(f"{'encoding':<18} {'commit MB/s':>11} {'re-encode MB/s':>14} {'cold head MB/s':>14} "
          f"{'ratio':>6} {'cold head~1 MB/s':>16} {'ratio':>6}")
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
                corafs("mount", rp, mnt)
                try:
                    drop_caches()
                    times.append(cat(os.path.join(mnt, spec, "model.safetensors")))
                finally:
                    corafs("umount", mnt)
            speeds.append(size / statistics.median(times))
        local = size / t_local
        print(f"{label:<18} {size / 1e6 / tc:>11.0f} "
              f"{(size / 1e6 / tr) if tr > 0.05 else float('nan'):>14.0f} "
              f"{speeds[0] / 1e6:>14.0f} {speeds[0] / local:>6.2f} {speeds[1] / 1e6:>16.0f} "
              f"{speeds[1] / local:>6.2f}")
        shutil.rmtree(rp)
    print(f"(local disk, cold: {size / t_local / 1e6:.0f} MB/s; ratio = throughput / local; "
          f"medians of 3)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--ckpts", default=os.path.join(tempfile.gettempdir(), "corafs-ckpts"))
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--no-reads", action="store_true", help="sizes and speeds only")
    ap.add_argument("--big-mib", type=int, default=1024,
                    help="size of the single-file case (0: skip it)")
    a = ap.parse_args()
    series = generate(a.ckpts, a.checkpoints)
    work = tempfile.mkdtemp(prefix="corafs-bench-hf-", dir=os.environ.get("TMPDIR"))
    try:
        raw = sum(os.path.getsize(f[f"{a.kind}/model.{e}"]) for f in series
                  for e in ("pth", "safetensors"))
        res = {}
        for label, tuning in (("forward (before)", dataclasses.replace(DEFAULT,
                                                                      head_first=False)),
                              ("head-first", DEFAULT)):
            rp = os.path.join(work, label.split()[0])
            res[label] = (rp, *commit_series(rp, series, a.kind, tuning))
        print(f"{parameters() / 1e6:.1f}M-parameter transformer, {len(series)} checkpoints, "
              f"{a.kind}, model.pth + model.safetensors: {raw / 1e6:.0f} MB in")
        print(f"{'encoding':<18} {'stored MB':>10} {'on disk MB':>11} {'max depth':>9} "
              f"{'head depth':>10} {'commit MB/s':>11} {'re-encode MB/s':>14}")
        for label, (_rp, st, tc, tr) in res.items():
            print(f"{label:<18} {(st.stored_bytes + st.meta_bytes) / 1e6:>10.1f} "
                  f"{st.disk_bytes / 1e6:>11.1f} {st.max_depth:>9} {st.head_max_depth:>10} "
                  f"{raw / 1e6 / tc:>11.0f} "
                  f"{(raw / 1e6 / tr) if tr > 0.05 else float('nan'):>14.0f}")
        (_, s_f, _, _), (_, s_h, _, _) = res["forward (before)"], res["head-first"]
        print(f"stored size head-first / forward: "
              f"{(s_h.stored_bytes + s_h.meta_bytes) / (s_f.stored_bytes + s_f.meta_bytes):.3f}")
        if a.no_reads:
            return
        head = {"model.pth": series[-1][f"{a.kind}/model.pth"],
                "model.safetensors": series[-1][f"{a.kind}/model.safetensors"]}
        old = {"model.safetensors": series[0][f"{a.kind}/model.safetensors"]}
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        print(f"\n{'read (time; ratio = mount/local time)':<34} {'local':>8} "
              f"{'forward':>8} {'ratio':>6} {'head-1st':>8} {'ratio':>6} {'aim':>10}")
        aims = {"cold cat head": "<= 1.67", "warm cat head": "<= 1.25",
                "cold torch.load": "<= 1.3", "cold cat oldest": "<= 4.0"}
        rows_f = reads(res["forward (before)"][0], mnt, head, old, len(series))
        rows_h = reads(res["head-first"][0], mnt, head, old, len(series))
        for (label, tl, tf), (_l, tl2, th) in zip(rows_f, rows_h):
            tl = min(tl, tl2)
            aim = next((v for k, v in aims.items() if label.startswith(k)), "")
            print(f"{label:<34} {tl:>7.3f}s {tf:>7.3f}s {tf / tl:>6.2f} {th:>7.3f}s "
                  f"{th / tl:>6.2f} {aim:>10}")
        print("(a time ratio of 1.67 is 0.6x the throughput; 1.25 is 0.8x; 4.0 is 0.25x)")
        if a.big_mib:
            big(work, a.big_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

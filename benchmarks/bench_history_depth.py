"""What the ``max_delta_depth`` and ``head_codec`` settings (``corafs config``) trade: stored
size against the read speed of history, in one run (issue 9).

The same real fine-tuning run as bench_headfirst.py (10 checkpoints, ``model.pth`` +
``model.safetensors``) is committed in order once with forward deltas (the baseline for size)
and once per setting, head-first. For each, after a repack: the stored size against forward
encoding, and cold ``cat`` through a fresh mount (drop_caches before each read) of the head, of
the version whose blocks lie deepest in their chains, and of the oldest, each beside the same
file read cold from local disk.

  python benchmarks/bench_history_depth.py [--kind fp32] [--settings 8:auto,4:auto,2:auto,2:planes-zstd]
"""
import argparse
import dataclasses
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_headfirst import commit_series  # noqa: E402
from harness import Report, cat, checkpoints_dir, drop_caches, mounted, workdir  # noqa: E402
from transformer_run import generate  # noqa: E402

from corafs import Repository  # noqa: E402
from corafs.config import DEFAULT  # noqa: E402
from corafs.core.stats import chain_depth  # noqa: E402


def _mean_depths(rp: str) -> list[tuple[int, float]]:
    """(steps back from main, mean chain depth of its safetensors blocks), newest first."""
    out = []
    with Repository(rp) as r:
        memo = {}
        for back, c in enumerate(r.log("main")):
            try:
                _cid, _p, e = r.resolve_path(f"{c.id}:model.safetensors")
            except Exception:
                continue            # the repository's first, empty commit
            ds = [chain_depth(r, b[0], memo) for t in r.get_meta(e["id"])["tensors"]
                  for b in r.tensor_manifest(t["id"])["blocks"]]
            out.append((back, sum(ds) / len(ds)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--ckpts", default=checkpoints_dir())
    ap.add_argument("--settings", default="8:auto,4:auto,2:auto,2:planes-zstd",
                    help="max_delta_depth:head_codec pairs, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    series = generate(a.ckpts, 10)
    n = len(series)
    local = {back: series[n - 1 - back][f"{a.kind}/model.safetensors"] for back in range(n)}
    rep = Report("history_depth", kind=a.kind, reps=a.reps, settings=a.settings)
    with workdir("depth") as work:
        run(rep, a, series, local, work)
    rep.done(f"{n} checkpoints, {a.kind}; ratios: stored / forward encoding, mount time / "
             f"local time (cold, medians of {a.reps})")


def run(rep, a, series, local, work):
    n = len(series)
    mnt = os.path.join(work, "mnt")

    def cold(fn):
        def once():
            drop_caches()
            return fn()
        return statistics.median(once() for _ in range(a.reps))

    def cold_mount(rp, back):
        def once():
            with mounted(rp, mnt) as m:
                drop_caches()
                return cat(os.path.join(m, f"main~{back}" if back else "main",
                                        "model.safetensors"))
        return statistics.median(once() for _ in range(a.reps))

    rp = os.path.join(work, "forward")
    st, _tc, _tr = commit_series(rp, series, a.kind,
                                 dataclasses.replace(DEFAULT, head_first=False))
    forward = st.stored_bytes + st.meta_bytes
    shutil.rmtree(rp)
    local_t = {}
    for spec in a.settings.split(","):
        depth, head = spec.split(":")
        rp = os.path.join(work, f"d{depth}-{head}")
        tun = dataclasses.replace(DEFAULT, max_delta_depth=int(depth), head_codec=head)
        st, _tc, _tr = commit_series(rp, series, a.kind, tun)
        stored = st.stored_bytes + st.meta_bytes
        depths = _mean_depths(rp)
        deepest, mean = max(depths, key=lambda x: x[1])
        ratios = []
        for back in (0, deepest, n - 1):
            if back not in local_t:
                local_t[back] = cold(lambda: cat(local[back]))
            ratios.append(cold_mount(rp, back) / local_t[back])
        cfg = f"max_delta_depth {depth}, head_codec {head}"
        rep.row(f"{cfg}: stored", stored / 1e6, "MB", baseline=forward / 1e6,
                baseline_what="forward encoding", aim="ratio <= 1.02")
        for label, back, r, aim in (("head", 0, ratios[0], "ratio <= 1.67"),
                                    (f"deepest (~{deepest}, mean depth {mean:.1f})",
                                     deepest, ratios[1], "ratio <= 4.0"),
                                    ("oldest", n - 1, ratios[2], "ratio <= 4.0")):
            rep.row(f"{cfg}: cold cat of {label} through a mount", r * local_t[back], "s",
                    baseline=local_t[back], baseline_what="local disk, cold", aim=aim)
        shutil.rmtree(rp)


if __name__ == "__main__":
    main()

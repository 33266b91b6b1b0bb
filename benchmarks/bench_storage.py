"""What a series costs to store (issue 20): corafs's default encoding against the baselines,
side by side in one run, on real fine-tuning runs.

Series (benchmarks/transformer_run.py, a 27M-parameter GPT-style transformer; cached):
  * 10 checkpoints, 8 steps apart, fp32 and bf16;
  * the same with the embeddings and the first half of the blocks frozen (partial fine-tune);
  * 31 checkpoints, 10 steps apart, fp32 and bf16;
  * a ``transformers.Trainer`` run (benchmarks/trainer_run.py): 10 checkpoint directories
    (model, ``optimizer.pt`` with AdamW moments, scheduler, rng state, trainer_state.json)
    committed by the TrainerCallback as the Trainer saves them; and its ``optimizer.pt`` alone.

Each model series commits ``model.safetensors`` only (one file per checkpoint, so every scheme
stores the same bytes). Columns, as ratios of the files' total to what is stored:
  * corafs: the default settings (head-first, ``max_delta_depth`` 8), ``du -sb`` of the
    repository after its re-encoding and repack;
  * forward: ``Tuning(head_first=False)``, the encoding before head-first (deltas against the
    previous version at ingest, chains bounded at 8 by far deltas against the first version);
  * unbounded: the same forward chain with no depth bound (one keyframe, then each version a
    delta against the previous): what bounded depth costs against no bound;
  * reference: each file XORed with the previous version, byte planes, xz (preset 9);
  * xz -9 per file.
The last two run xz on a 1/32 sample of every file (the same 128 KiB slices, one every 4 MiB,
of every version),
since xz -9 takes minutes per file here; the ratio of the sample stands for the file's.

  python benchmarks/bench_storage.py [--ckpts /tmp/corafs-ckpts] [--only 10-fp32,...]
"""
from __future__ import annotations

import argparse
import dataclasses
import lzma
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import Report, checkpoints_dir, workdir  # noqa: E402
from transformer_run import generate  # noqa: E402

from corafs import Repository  # noqa: E402
from corafs.config import DEFAULT  # noqa: E402

SLICE = 128 << 10
EVERY = 32


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def commit_series(repo_path: str, versions: list[dict[str, str]], tuning) -> tuple[int, float]:
    """Commit each version (name -> path) in order; return (bytes on disk, seconds)."""
    Repository.init(repo_path).close()
    t = time.perf_counter()
    with Repository(repo_path, tuning=tuning) as r:
        r.background_reencode = False
        for i, files in enumerate(versions):
            r.commit("main", files, message=f"checkpoint {i}")
            r.reencode()
        r.repack(grace=0)
    return du(repo_path), time.perf_counter() - t


def _sample(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return b"".join(data[o:o + SLICE] for o in range(0, len(data), SLICE * EVERY))


def _xz(data: bytes) -> int:
    return len(lzma.compress(data, preset=9))


def _planes(data: bytes, width: int) -> list[bytes]:
    a = np.frombuffer(data[:len(data) // width * width], dtype=np.uint8).reshape(-1, width)
    return [np.ascontiguousarray(a[:, j]).tobytes() for j in range(width)] + \
        [data[len(data) // width * width:]]


def _reference_one(args) -> tuple[int, int, int]:
    """(sample bytes, reference-scheme bytes, xz -9 bytes) of one file version."""
    prev, cur, width = args
    b = _sample(cur)
    x = b
    if prev is not None:
        a = _sample(prev)
        if len(a) == len(b):
            x = (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()
    return len(b), sum(_xz(p) for p in _planes(x, width)), _xz(b)


def references(versions: list[dict[str, str]], width: int, pool) -> tuple[float, float]:
    """(reference-scheme ratio, xz -9 per file ratio), estimated from samples."""
    jobs = []
    for i, files in enumerate(versions):
        for name, path in files.items():
            prev = versions[i - 1].get(name) if i else None
            jobs.append((prev, path, width if name.endswith((".safetensors", ".pt",
                                                             ".pth", ".bin")) else 1))
    n = ref = xz = 0
    for s, r, x in pool.map(_reference_one, jobs):
        n, ref, xz = n + s, ref + r, xz + x
    return n / ref, n / xz


def row(label, versions, width, work, pool) -> dict:
    total = sum(os.path.getsize(p) for v in versions for p in v.values())
    out = {"series": label, "versions": len(versions), "total": total}
    for name, tuning in (("corafs", DEFAULT),
                         ("forward", dataclasses.replace(DEFAULT, head_first=False)),
                         ("unbounded", dataclasses.replace(DEFAULT, head_first=False,
                                                           max_delta_depth=255))):
        path = os.path.join(work, name)
        size, secs = commit_series(path, versions, tuning)
        out[name] = total / size
        out[name + "_s"] = secs
        shutil.rmtree(path)
    out["reference"], out["xz"] = references(versions, width, pool)
    return out


def add_rows(rep, r: dict) -> None:
    """A series' compression (files' total / stored) against each baseline; ratios > 1 mean
    corafs stores less."""
    what = f"{r['series']} ({r['versions']} versions, {r['total'] / 1e6:.0f} MB)"
    for base, desc in (("forward", "forward deltas, depth-bounded"),
                       ("reference", "XOR vs previous, byte planes, xz"),
                       ("unbounded", "forward deltas, unbounded chains")):
        rep.row(f"{what}: corafs compression vs {base}", r["corafs"], "x",
                baseline=r[base], baseline_what=desc, commit_s=r["corafs_s"])
    rep.row(f"{what}: xz -9 per file", r["xz"], "x")
    print(f"  {what}: corafs {r['corafs']:.2f}x, forward {r['forward']:.2f}x, reference "
          f"{r['reference']:.2f}x, unbounded {r['unbounded']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=checkpoints_dir())
    ap.add_argument("--trainer", default=os.path.join(os.path.dirname(checkpoints_dir()),
                                                      "corafs-trainer-bench"))
    ap.add_argument("--only", default="", help="comma-separated series labels")
    a = ap.parse_args()
    runs = {
        "10": lambda: generate(a.ckpts, 10),
        "10-frozen": lambda: generate(a.ckpts, 10, freeze=True),
        "31": lambda: generate(a.ckpts, 31, 10),
    }
    only = set(filter(None, a.only.split(",")))
    rep = Report("storage", only=a.only)
    with workdir("storage") as work, ProcessPoolExecutor(2) as pool:
        for key, gen in runs.items():
            for kind in ("fp32", "bf16"):
                label = f"{key}-{kind}"
                if only and label not in only:
                    continue
                series = gen()
                versions = [{"model.safetensors": s[f"{kind}/model.safetensors"]}
                            for s in series]
                add_rows(rep, row(label, versions, 4 if kind == "fp32" else 2, work, pool))
        if not only or "trainer" in only:
            from trainer_run import run as trainer_run
            if not os.path.isdir(os.path.join(a.trainer, "run", "checkpoint-100")):
                shutil.rmtree(a.trainer, ignore_errors=True)
                trainer_run(os.path.join(a.trainer, "run"), os.path.join(a.trainer, "repo"), 10)
            dirs = sorted((d for d in os.listdir(os.path.join(a.trainer, "run"))
                           if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
            versions = [{n: os.path.join(a.trainer, "run", d, n)
                         for n in sorted(os.listdir(os.path.join(a.trainer, "run", d)))}
                        for d in dirs]
            total = sum(os.path.getsize(p) for v in versions for p in v.values())
            rep.row("TrainerCallback's own repository, committed while training",
                    total / du(os.path.join(a.trainer, "repo")), "x")
            add_rows(rep, row("trainer dirs", versions, 4, work, pool))
            add_rows(rep, row("trainer optimizer.pt", [{"optimizer.pt": v["optimizer.pt"]}
                                                       for v in versions], 4, work, pool))
    rep.done("compression = the files' total / stored; ratio = corafs / baseline")


if __name__ == "__main__":
    main()

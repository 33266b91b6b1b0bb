"""How to keep every version within ``max_delta_depth`` deltas of a keyframe, chosen by the
numbers (issue 20, item 1): the storage each scheme would need on a real fine-tuning run.

The cost of every possible delta is measured once on the real checkpoints
(benchmarks/transformer_run.py; every third 4 MiB block of every float tensor of
``model.safetensors``, corafs's own codecs: the smallest of keyframe / XOR / ordered
subtraction): ``C[i, j]`` = bytes of version i as a delta against version j, and each
version's keyframe. Then each scheme is played commit by commit on those costs:

  * forward(D): deltas against the previous version at ingest, a far delta against the
    first version when the chain would pass D (corafs before head-first);
  * unbounded: one keyframe, every later version a delta against the previous (no bound);
  * FSFS skip-deltas (Subversion): version i against i with its lowest set bit cleared, the
    head a keyframe;
  * head-first, runs of D-1 (the scheme before this change): a run of reverse deltas closes
    at D-1, its closing block a far delta against the lineage's root keyframe (the first
    run's closing block is that root: a second keyframe);
  * head-first, runs of D + keyframe roots: runs close only when they must, a keyframe or
    far delta against the nearest root whichever is smaller (cost-chosen);
  * head-first, floating root (the scheme corafs uses now): the first block to close a run
    becomes a delta against the head, encoded again for each new head (one block per commit),
    and later runs close on anchors against it; it is pinned as a keyframe once a delta no
    longer pays.

Prints the stored ratio (logical / stored, tensor data only) per scheme, with the deepest chain,
the keyframes per block position and the blocks re-encoded per commit.

  python benchmarks/bench_anchor_schemes.py [--ckpts /tmp/corafs-ckpts] [--depth 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import Report, checkpoints_dir  # noqa: E402
from transformer_run import generate  # noqa: E402

from corafs import codecs  # noqa: E402


def cost_matrix(series, kind: str, cache: str) -> tuple[int, list[int], dict]:
    if os.path.exists(cache):
        m = json.load(open(cache))
        return m["raw"], m["K"], {tuple(map(int, k.split(","))): v for k, v in m["C"].items()}
    import torch
    from safetensors import safe_open
    dt = "F32" if kind == "fp32" else "BF16"

    def load(i):
        blocks = []
        with safe_open(series[i][f"{kind}/model.safetensors"], "pt") as f:
            for k in sorted(f.keys()):
                t = f.get_tensor(k)
                if t.numel() < 65536:
                    continue
                a = t.view(torch.int32 if kind == "fp32" else torch.int16).numpy()
                a = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
                blocks += [a[o:o + (4 << 20)] for o in range(0, a.size, 4 << 20)]
        return blocks[::3]

    vs = [load(i) for i in range(len(series))]
    n = len(vs)

    def cost(p):
        i, j = p
        return sum(len(codecs.encode_block(a, dt, 1, b, "x" * 32, 0, 255)[0])
                   for a, b in zip(vs[i], vs[j]))

    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        K = list(ex.map(lambda i: sum(len(codecs.encode_block(b, dt, 1)[0]) for b in vs[i]),
                        range(n)))
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        C = dict(zip(pairs, ex.map(cost, pairs)))
    raw = sum(b.size for b in vs[0])
    json.dump({"raw": raw, "K": K, "C": {f"{i},{j}": v for (i, j), v in C.items()}},
              open(cache, "w"))
    return raw, K, C


class Costs:
    def __init__(self, raw, K, C):
        self.raw, self.K, self.C = raw, K, C

    def d(self, i, j):
        return self.C[(min(i, j), max(i, j))]

    def head(self, i):
        # head_codec auto: raw where compression keeps more than 80% of the bytes
        return self.raw if self.K[i] > 0.8 * self.raw else self.K[i]


def forward(c: Costs, n: int, D: int):
    tot, depth, root = c.K[0], {0: 0}, 0
    for i in range(1, n):
        if depth[i - 1] >= D:
            f = c.d(i, root)
            if f < c.K[i]:
                tot, depth[i] = tot + f, 1
            else:
                tot, depth[i], root = tot + c.K[i], 0, i
        else:
            tot, depth[i] = tot + c.d(i, i - 1), depth[i - 1] + 1
    return tot, max(depth.values()), 1, 0


def unbounded(c: Costs, n: int, D: int):
    return c.K[0] + sum(c.d(i, i - 1) for i in range(1, n)), n - 1, 1, 0


def skip(c: Costs, n: int, D: int):
    tot = c.head(n - 1)
    for i in range(n - 1):
        b = i & (i - 1) if i else None
        tot += c.K[i] if b is None else min(c.K[i], c.d(i, b))
    return tot, max(bin(i).count("1") for i in range(n)), 1 + 1, 1


def _play(c: Costs, n: int, D: int, step) -> tuple[float, int, int, float]:
    """Play a head-first scheme: ``step(enc, o, h, pos)`` encodes the old head ``o`` when
    ``h`` is committed; enc[i] = ("K",) | ("R", base, pos) | ("A", base) | ("FL", head)."""
    enc: dict = {}
    work = 0
    for h in range(1, n):
        o = h - 1
        p = enc.get(o - 1)
        pos = p[2] + 1 if p is not None and p[0] == "R" and p[1] == o else 1
        work += step(enc, o, h, pos)
    tot = c.head(n - 1)
    for i in range(n - 1):
        e = enc[i]
        tot += c.K[i] if e[0] == "K" else c.d(i, n - 1 if e[0] == "FL" else e[1])

    def depth(i):
        e = enc.get(i, ("K",)) if i != n - 1 else ("K",)
        return 0 if e[0] == "K" else 1 if e[0] == "FL" else 1 + depth(e[1])

    kf = 1 + sum(1 for i in range(n - 1) if enc[i][0] == "K")
    return tot, max(depth(i) for i in range(n)), kf, work / max(1, n - 1)


def _root_below(enc, j):
    while j >= 0:
        e = enc[j]
        if e[0] == "K":
            return j
        if e[0] == "A":
            return _root_below(enc, e[1]) if enc[e[1]][0] != "K" else e[1]
        return None
    return None


def runs_short(c: Costs, n: int, D: int):
    def step(enc, o, h, pos):
        if pos >= D:
            r = _root_below(enc, o - pos)
            enc[o] = ("A", r) if r is not None and c.d(o, r) < c.K[o] else ("K",)
        else:
            enc[o] = ("R", h, pos)
        return 1
    return _play(c, n, D, step)


def runs_full(c: Costs, n: int, D: int):
    def step(enc, o, h, pos):
        r = _root_below(enc, o - pos)
        d = c.d(o, h)
        if pos > D:
            enc[o] = ("K",)
        elif pos == D and r is not None:
            f = c.d(o, r)
            # far delta now (a run of D-1) or one more delta and a keyframe root next time
            enc[o] = ("A", r) if ((D - 1) * d + f) / D <= (D * d + c.K[o]) / (D + 1) \
                else ("R", h, pos)
        else:
            enc[o] = ("R", h, pos)
        return 1
    return _play(c, n, D, step)


def floating(c: Costs, n: int, D: int):
    state = {"fl": None}

    def step(enc, o, h, pos):
        fl = state["fl"]
        work = 1
        if fl is None:
            if pos >= D:
                enc[o] = ("FL", h)
                state["fl"] = o
            else:
                enc[o] = ("R", h, pos)
        else:
            enc[o] = ("A", fl) if pos >= D - 1 else ("R", h, pos)
            work += 1
            if c.d(fl, h) >= 0.97 * c.K[fl]:
                enc[fl] = ("K",)
                state["fl"] = None
        return work
    return _play(c, n, D, step)


SCHEMES = [("forward(D)", forward), ("unbounded", unbounded), ("FSFS skip-deltas", skip),
           ("head-first, runs of D-1", runs_short), ("head-first, runs of D", runs_full),
           ("head-first, floating root", floating)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=checkpoints_dir())
    ap.add_argument("--depth", type=int, nargs="+", default=[8, 16])
    a = ap.parse_args()
    rep = Report("anchor_schemes", depth=a.depth)
    for label, series in (("31 checkpoints", generate(a.ckpts, 31, 10)),):
        for kind in ("fp32", "bf16"):
            cache = os.path.join(a.ckpts, f"costs-{len(series)}-{kind}.json")
            c = Costs(*cost_matrix(series, kind, cache))
            for n in (10, len(series)):
                for D in a.depth:
                    base = unbounded(c, n, D)[0]
                    for name, fn in SCHEMES:
                        tot, md, kf, work = fn(c, n, D)
                        rep.row(f"{label}, {kind}, first {n}, max_delta_depth {D}: {name}",
                                c.raw * n / tot, "x", baseline=c.raw * n / base,
                                baseline_what="unbounded chains", deepest=md, keyframes=kf,
                                reencodes_per_commit=work)
    rep.done("simulated from measured block costs; compression = raw / stored")


if __name__ == "__main__":
    main()

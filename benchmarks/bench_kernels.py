"""Codec throughput per core: the compiled kernels against the numpy reference they replaced,
side by side in one run, on the tensors of a real fine-tuning run (benchmarks/transformer_run.py:
a 24M-parameter transformer fine-tuned with AdamW, fp32 and the same run cast to bf16).

Every block of the last checkpoint is encoded and decoded at the store's block size, in one
thread, as a commit and a read do it:
  keyframe decode   planes-zstd body -> bytes                       (aim >= 2 GB/s)
  delta decode      osub-planes-zstd against the newer version       (aim >= 1.5 GB/s)
  delta decode 2nd  osub2-planes-zstd against two newer versions
  encode            osub delta + planes + zstd, as re-encoding does  (aim >= 0.5 GB/s)
  chain             the oldest of the run under 9 levels of deltas, decoded in one kernel
                    call per block against the level-by-level decode the reader did before
zstd (through the zstandard package) runs in both columns; the kernels replace the numpy
arithmetic around it. Both produce the same bytes (tests/test_kernels.py). The kernels decode
into buffers that were used before (as the mount's tuned heap and the block cache reuse
memory); "fresh memory" decodes into new arrays, whose first touch (page faults) costs as much
as the decode; "zstd alone" is the planes' decompression without the kernels, the floor.

  python benchmarks/bench_kernels.py [--out /tmp/corafs-ckpts] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import storages  # noqa: E402
from harness import Report, checkpoints_dir  # noqa: E402
from transformer_run import generate  # noqa: E402

from corafs import codecs  # noqa: E402
from corafs.codecs import planes, reference, zstd  # noqa: E402
from corafs.config import DEFAULT  # noqa: E402
from corafs.dtypes import lookup  # noqa: E402

KIND = {"osub-planes-zstd": planes.SUB, "osub2-planes-zstd": planes.SUB2}


def blocks(path_new, path_b1, path_b2):
    """(dtype, width, block, base, base2) for every block of every float tensor."""
    new, b1, b2 = storages(path_new), storages(path_b1), storages(path_b2)
    bs = DEFAULT.block_size
    out = []
    for name, (dtype, raw) in new.items():
        dt = lookup(dtype)
        if not dt.is_float or name not in b1 or name not in b2:
            continue
        for off in range(0, raw.size, bs):
            a = raw[off:off + bs]
            x1 = b1[name][1][off:off + bs]
            x2 = b2[name][1][off:off + bs]
            if a.size == x1.size == x2.size and a.size:
                out.append((dt, codecs._width(dt, a.size), a.copy(), x1.copy(), x2.copy()))
    return out


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(bl, repeat, level):
    total = sum(b[2].size for b in bl)
    key = [planes.encode(a, w, level) for _dt, w, a, _b, _c in bl]
    sub = [planes.encode(a, w, level, planes.SUB, b) for _dt, w, a, b, _c in bl]
    sub2 = [planes.encode(a, w, level, planes.SUB2, b, c) for _dt, w, a, b, c in bl]
    for (_dt, w, a, b, c), k, s, s2 in zip(bl, key, sub, sub2):   # same bytes either way
        assert k == reference.encode_body("planes-zstd", a, w, level)
        assert s == reference.encode_body("osub-planes-zstd", a, w, level, b)
        assert s2 == reference.encode_body("osub2-planes-zstd", a, w, level, (b, c))
    rows = []
    outs = [np.empty(b[2].size, dtype=np.uint8) for b in bl]   # decode buffers, reused

    def row(what, native, numpy_):
        tn, tr = best(native, repeat), best(numpy_, repeat)
        rows.append((what, total / tn / 1e6, total / tr / 1e6, tr / tn))

    row("keyframe decode",
        lambda: [planes.decode(k, o.size, o) for k, o in zip(key, outs)],
        lambda: [reference.planes_decode(k, bb[2].size) for k, bb in zip(key, bl)])
    row("keyframe, fresh memory",
        lambda: [planes.decode(k, bb[2].size) for k, bb in zip(key, bl)],
        lambda: [reference.planes_decode(k, bb[2].size) for k, bb in zip(key, bl)])
    row("delta decode (osub)",
        lambda: [planes.decode(s, o.size, o, planes.SUB, b)
                 for s, o, (_dt, w, a, b, _c) in zip(sub, outs, bl)],
        lambda: [reference.decode_body("osub-planes-zstd", s, a.size, w, b)
                 for s, (_dt, w, a, b, _c) in zip(sub, bl)])
    row("zstd alone (osub)",
        lambda: [_zstd_alone(s, a.size) for s, (_dt, w, a, b, _c) in zip(sub, bl)],
        lambda: [_zstd_alone(s, a.size) for s, (_dt, w, a, b, _c) in zip(sub, bl)])
    row("delta decode (osub2)",
        lambda: [planes.decode(s, o.size, o, planes.SUB2, b, c)
                 for s, o, (_dt, w, a, b, c) in zip(sub2, outs, bl)],
        lambda: [reference.decode_body("osub2-planes-zstd", s, a.size, w, (b, c))
                 for s, (_dt, w, a, b, c) in zip(sub2, bl)])
    row("encode (osub)",
        lambda: [planes.encode(a, w, level, planes.SUB, b) for _dt, w, a, b, _c in bl],
        lambda: [reference.encode_body("osub-planes-zstd", a, w, level, b)
                 for _dt, w, a, b, _c in bl])
    stored = sum(len(s) for s in sub) / total
    return total, rows, stored


def _zstd_alone(body, raw_len):
    _w, frames = planes.frames(body, raw_len)
    return [zstd.decompress(f, raw_len) for m, f in frames if m == planes.ZSTD]


def chain_rows(paths, repeat, level):
    """The oldest of ``paths`` (oldest first) stored as a head-first chain (each version a
    second-order delta against the two newer ones, the newest a keyframe), decoded block by
    block: ``_kernels.chain`` (one call per block's chain, levels in scratch) against the
    level-by-level decode the reader did before it (each level into a new array, checked
    against its id, then the base of the next). (levels, MB/s of level bytes each way)."""
    vs = [storages(p) for p in paths]
    bs = DEFAULT.block_size
    per_block = []                  # [(top raw, levels bottom first, keyframe, next-to-top)]
    for name, (dtype, raw) in vs[-1].items():
        dt = lookup(dtype)
        if not dt.is_float:
            continue
        for off in range(0, raw.size, bs):
            xs = [v[name][1][off:off + bs].copy() for v in vs]
            if len({x.size for x in xs}) != 1 or not xs[0].size:
                continue
            w = codecs._width(dt, xs[0].size)
            levels = []
            for i in range(len(xs) - 2, -1, -1):            # newest delta first = bottom
                b, b2 = xs[i + 1], xs[min(i + 2, len(xs) - 1)]
                kind = planes.SUB2 if i + 2 < len(xs) else planes.SUB
                body = planes.encode(xs[i], w, level, kind, b, b2)
                levels.append((kind,) + planes.frames(body, xs[i].size))
            per_block.append((xs[0], levels, xs[-1], xs[-2]))
    from corafs.codecs import _kernels
    from corafs.core.objects import data_id
    outs = [np.empty(top.size, dtype=np.uint8) for top, *_ in per_block]

    def native():
        for (top, levels, key, _n), out in zip(per_block, outs):
            _kernels.chain(levels, key, None, out, planes.scratch_for(top.size, len(levels)))
            data_id(out)

    def by_level():
        for top, levels, key, _n in per_block:
            below2, below = None, key
            for kind, w, frames in levels:
                new = np.empty(top.size, dtype=np.uint8)
                _kernels.chain([(kind, w, frames)], below, below2 if kind == planes.SUB2
                               else None, new, planes.scratch_for(top.size, 1))
                data_id(new)
                below2, below = below, new

    native()
    for (top, *_), out in zip(per_block, outs):
        assert out.tobytes() == top.tobytes()
    total = sum(top.size * len(levels) for top, levels, *_ in per_block)
    return (len(per_block[0][1]), total / best(native, repeat) / 1e6,
            total / best(by_level, repeat) / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=checkpoints_dir())
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    series = generate(a.out, a.checkpoints)
    aims = {"keyframe decode": 2000, "delta decode (osub)": 1500, "encode (osub)": 500}
    rep = Report("kernels", checkpoints=a.checkpoints, repeat=a.repeat)
    for kind in ("fp32", "bf16"):
        f = f"{kind}/model.safetensors"
        bl = blocks(series[-3][f], series[-2][f], series[-1][f])
        total, rows, stored = measure(bl, a.repeat, DEFAULT.zstd_level)
        for what, n, r, _x in rows:
            aim = aims.get(what)
            rep.row(f"{kind}: {what}", n, "MB/s", baseline=r, baseline_what="numpy reference",
                    aim=f">= {aim} MB/s" if aim else "")
        rep.row(f"{kind}: osub delta stored ({total / 1e6:.0f} MB of tensors)", stored,
                "of raw")
        depth, n_chain, n_levels = chain_rows([s[f] for s in series], a.repeat,
                                              DEFAULT.zstd_level)
        rep.row(f"{kind}: chain of {depth} deltas, per level", n_chain, "MB/s",
                baseline=n_levels, baseline_what="level by level (the reader before)")
        # the planes' match table against zstd level 1's own, in the same run
        tuned = {what: n for what, n, _r, _x in rows}
        table, zstd.PLANE_HASH_LOG = zstd.PLANE_HASH_LOG, 14
        try:
            _t, rows14, stored14 = measure(bl, a.repeat, DEFAULT.zstd_level)
        finally:
            zstd.PLANE_HASH_LOG = table
        for what, n, _r, _x in rows14:
            if what in ("keyframe decode", "delta decode (osub)", "encode (osub)"):
                rep.row(f"{kind}: {what}, match table 2^{table}", tuned[what], "MB/s",
                        baseline=n, baseline_what="zstd level 1's table (2^14)")
        rep.row(f"{kind}: osub delta stored, match table 2^{table}", stored, "of raw",
                baseline=stored14, baseline_what="zstd level 1's table (2^14)")
    rep.done(f"one thread; blocks of {DEFAULT.block_size >> 20} MiB; zstd level "
             f"{DEFAULT.zstd_level}; best of {a.repeat}; ratio = speedup over numpy")


if __name__ == "__main__":
    main()

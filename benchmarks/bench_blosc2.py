"""Our byte-plane pipeline against python-blosc2 (shuffle / bytedelta filters + zstd, one
thread) on the same fp32 blocks: a keyframe, an XOR delta and an ordered-sub delta of a
fine-tune-sized update. Prints ratio and encode/decode speed side by side.

  python benchmarks/bench_blosc2.py
"""
import os
import sys

import blosc2
import numpy as np

from corafs.codecs import planes
from corafs.codecs import reference as transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, best  # noqa: E402


def t(f):
    return best(f, 20)


def main():
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1 << 20, dtype=np.float32) * 0.02
    n = b + rng.standard_normal(b.size, dtype=np.float32) * 1e-4
    B, N = b.view(np.uint8), n.view(np.uint8)
    cases = {"keyframe": N.copy(), "xor delta": transforms.xor_delta(N, B, 4),
             "osub delta": transforms.sub_delta(N.copy(), B.copy(), 4)}
    blosc2.set_nthreads(1)
    mb = N.size / 1e6
    rep = Report("blosc2")
    for name, d in cases.items():
        z = planes.encode(d, 4, 1)
        ours = (len(z) / d.size, mb / t(lambda: planes.encode(d, 4, 1)),
                mb / t(lambda: planes.decode(z, d.size)))
        for filt, lbl in (([blosc2.Filter.SHUFFLE], "shuffle"),
                          ([blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA], "shuffle+bytedelta")):
            for lvl in (1, 3):
                kw = dict(codec=blosc2.Codec.ZSTD, clevel=lvl, typesize=4, filters=filt, nthreads=1)
                c = blosc2.compress2(d, **kw)
                theirs = (len(c) / d.size, mb / t(lambda: blosc2.compress2(d, **kw)),
                          mb / t(lambda: blosc2.decompress2(c)))
                other = f"blosc2 {lbl} zstd-{lvl}"
                for k, (what, unit) in enumerate((("stored", "of raw"), ("encode", "MB/s"),
                                                  ("decode", "MB/s"))):
                    rep.row(f"{name}: corafs planes + zstd-1 {what}", ours[k], unit,
                            baseline=theirs[k], baseline_what=other)
    rep.done("one thread, 4 MiB fp32 blocks")


if __name__ == "__main__":
    main()

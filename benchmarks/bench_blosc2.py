"""Our byte-plane pipeline against python-blosc2 (shuffle / bytedelta filters + zstd, one
thread) on the same fp32 blocks: a keyframe, an XOR delta and an ordered-sub delta of a
fine-tune-sized update. Prints ratio and encode/decode speed side by side.

  python benchmarks/bench_blosc2.py
"""
import time

import blosc2
import numpy as np

from corafs.codecs import planes
from corafs.codecs import reference as transforms


def t(f, k=20):
    f()
    s = time.perf_counter()
    for _ in range(k):
        f()
    return (time.perf_counter() - s) / k


def main():
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1 << 20, dtype=np.float32) * 0.02
    n = b + rng.standard_normal(b.size, dtype=np.float32) * 1e-4
    B, N = b.view(np.uint8), n.view(np.uint8)
    cases = {"keyframe": N.copy(), "xor delta": transforms.xor_delta(N, B, 4),
             "osub delta": transforms.sub_delta(N.copy(), B.copy(), 4)}
    blosc2.set_nthreads(1)
    mb = N.size / 1e6
    print(f"{'data':<11} {'pipeline':<36} {'ratio':>7} {'enc MB/s':>9} {'dec MB/s':>9}")
    for name, d in cases.items():
        z = planes.encode(d, 4, 1)
        print(f"{name:<11} {'corafs planes + zstd-1':<36} {len(z) / d.size:7.4f} "
              f"{mb / t(lambda: planes.encode(d, 4, 1)):9.0f} {mb / t(lambda: planes.decode(z, d.size)):9.0f}")
        for filt, lbl in (([blosc2.Filter.SHUFFLE], "shuffle"),
                          ([blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA], "shuffle+bytedelta")):
            for lvl in (1, 3):
                kw = dict(codec=blosc2.Codec.ZSTD, clevel=lvl, typesize=4, filters=filt, nthreads=1)
                c = blosc2.compress2(d, **kw)
                print(f"{'':<11} {'blosc2 ' + lbl + f' zstd-{lvl}':<36} {len(c) / d.size:7.4f} "
                      f"{mb / t(lambda: blosc2.compress2(d, **kw)):9.0f} "
                      f"{mb / t(lambda: blosc2.decompress2(c)):9.0f}")


if __name__ == "__main__":
    main()

"""Loading without a mount (issue 11): one tensor out of a 1 GiB checkpoint must decode under
10% of the file. Side by side in one run: safetensors' own safe_open on the local file, and
corafs' load_tensors / corafs.open on the stored file (cold: a fresh Repository each time).

  python benchmarks/bench_load_tensors.py [--mib 1024]
"""
import argparse
import os
import sys
import time

import numpy as np
import safetensors
import safetensors.numpy

import corafs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, workdir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    a = ap.parse_args()
    rep = Report("load_tensors", mib=a.mib)
    with workdir("load") as work:
        rng = np.random.default_rng(0)
        n = a.mib // 32
        src = os.path.join(work, "model.safetensors")
        safetensors.numpy.save_file(
            {f"layer{i}": rng.standard_normal((32 << 20) // 4, dtype=np.float32)
             .reshape(-1, 1024) for i in range(n)}, src)
        size = os.path.getsize(src)
        repo = corafs.Repository.init(os.path.join(work, "repo"))
        repo.commit("main", {"model.safetensors": src})
        repo.close()
        name = f"layer{n // 2}"

        t0 = time.perf_counter()
        with safetensors.safe_open(src, "np") as f:
            local = f.get_tensor(name)
        t_local = time.perf_counter() - t0

        with corafs.Repository(os.path.join(work, "repo")) as r:
            t0 = time.perf_counter()
            got = r.load_tensors("main:model.safetensors", names=[name])[name]
            t_corafs = time.perf_counter() - t0
            decoded = r.decoder.decoded_bytes
        assert np.array_equal(got, local)

        t0 = time.perf_counter()
        with open(src, "rb") as f:
            whole_local = f.read()
        t_read_local = time.perf_counter() - t0
        with corafs.Repository(os.path.join(work, "repo")) as r:
            t0 = time.perf_counter()
            with corafs.open(r, "main:model.safetensors") as f:
                whole = f.read()
            t_read_corafs = time.perf_counter() - t0
        assert whole == whole_local
        rep.row("one tensor: corafs load_tensors", t_corafs, "s", baseline=t_local,
                baseline_what="safe_open on the local file")
        rep.row("whole file: corafs.open().read()", t_read_corafs, "s", baseline=t_read_local,
                baseline_what="open().read() of the local file")
        rep.row("decoded for one tensor", decoded / 2**20, "MiB", baseline=size / 2**20,
                baseline_what="file size", aim="ratio < 0.10")
    rep.done(f"{n} tensors of 32 MiB, file {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

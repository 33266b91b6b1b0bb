"""Ingest and decode throughput of a ~1 GiB checkpoint, side by side with `zstd -3` of the same
file and a plain copy, on this machine.

  python benchmarks/bench_speed.py [--size-mib 1024]

Ingest = parse + hash + encode + write (Repository.commit); decode = full read of the file from
a fresh Repository (nothing cached), sha256-verified. Two versions are measured: a keyframe
version and a fine-tuned version stored as deltas against it."""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import safetensors.numpy
import zstandard

from corafs import Repository


def make_checkpoint(path, size_mib, seed=0, base=None, noise=0.0):
    rng = np.random.default_rng(seed)
    tensors = {}
    per = 64 << 20   # 64 MiB tensors, like large linear layers
    n = (size_mib << 20) // per
    for i in range(n):
        if base is None:
            t = (rng.standard_normal(per // 4, dtype=np.float32) * 0.02).reshape(-1, 4096)
        else:
            t = base[f"layers.{i}.weight"] + (rng.standard_normal(per // 4, dtype=np.float32)
                                              * noise).reshape(-1, 4096)
        tensors[f"layers.{i}.weight"] = t
    safetensors.numpy.save_file(tensors, str(path))
    return tensors


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def drop_caches():
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corafs-bench-", dir=os.environ.get("BENCH_DIR"))
    try:
        src = os.path.join(tmp, "model.safetensors")
        base = make_checkpoint(src, a.size_mib)
        tuned = os.path.join(tmp, "tuned.safetensors")
        make_checkpoint(tuned, a.size_mib, seed=1, base=base, noise=1e-4)
        del base
        size = os.path.getsize(src)
        mb = size / 1e6
        rows = []

        drop_caches()
        t, _ = timed(lambda: shutil.copyfile(src, os.path.join(tmp, "copy")))
        os.unlink(os.path.join(tmp, "copy"))
        rows.append(("plain copy (shutil.copyfile)", mb / t))
        drop_caches()
        if shutil.which("zstd"):
            t, _ = timed(lambda: subprocess.run(["zstd", "-3", "-q", "-f", "-T1", src, "-o",
                                                 src + ".zst"], check=True))
            zsize = os.path.getsize(src + ".zst")
            t2, _ = timed(lambda: subprocess.run(["zstd", "-d", "-q", "-f", src + ".zst", "-o",
                                                  os.devnull], check=True))
            label = "zstd -3 CLI (1 thread)"
        else:
            def comp():
                with open(src, "rb") as fi, open(src + ".zst", "wb") as fo:
                    zstandard.ZstdCompressor(level=3).copy_stream(fi, fo)
            t, _ = timed(comp)
            zsize = os.path.getsize(src + ".zst")

            def dec():
                with open(src + ".zst", "rb") as fi, open(os.devnull, "wb") as fo:
                    zstandard.ZstdDecompressor().copy_stream(fi, fo)
            t2, _ = timed(dec)
            label = "zstd -3 (python zstandard, 1 thread)"
        rows.append((f"{label}: compress", mb / t))
        rows.append((f"{label}: decompress", mb / t2))
        os.unlink(src + ".zst")

        repo_path = os.path.join(tmp, "repo")
        Repository.init(repo_path).close()
        drop_caches()
        with Repository(repo_path) as r:
            t_in1, _ = timed(lambda: r.commit("main", {"model.safetensors": src}))
        with Repository(repo_path) as r:
            t_in2, _ = timed(lambda: r.commit("main", {"model.safetensors": tuned}))
            st = r.stats()
        rows.append(("corafs ingest, keyframe version", mb / t_in1))
        rows.append(("corafs ingest, fine-tune (deltas)", mb / t_in2))

        want = {}
        for rev, path in (("main~1", src), ("main", tuned)):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for c in iter(lambda: f.read(1 << 24), b""):
                    h.update(c)
            want[rev] = h.hexdigest()
        for rev, label in (("main~1", "keyframe version"), ("main", "fine-tune (deltas)")):
            drop_caches()
            with Repository(repo_path) as r:
                _, _, e = r.resolve_path(f"{rev}:model.safetensors")
                reader = r.open_file(e)

                def read_all():
                    n = 0
                    for piece in reader.chunks(r.pool):
                        n += len(piece)
                    return n
                t, n = timed(read_all)
                assert n == size
            with Repository(repo_path) as r:    # verify, untimed: byte-exact
                _, _, e = r.resolve_path(f"{rev}:model.safetensors")
                h = hashlib.sha256()
                for piece in r.open_file(e).chunks(r.pool):
                    h.update(piece)
                assert h.hexdigest() == want[rev], "decode is not byte-exact"
            rows.append((f"corafs decode (byte-exact), {label}", mb / t))

        print(f"\ncheckpoint: {size / 2**20:.0f} MiB safetensors, fp32, {os.cpu_count()} cores")
        print(f"{'what':<52} {'MB/s':>8}")
        for k, v in rows:
            print(f"{k:<52} {v:8.0f}")
        cp = rows[0][1]
        print(f"\nratios: ingest keyframe / plain copy = {rows[3][1] / cp:.2f}, "
              f"ingest keyframe / zstd-3 = {rows[3][1] / rows[1][1]:.2f}, "
              f"decode keyframe / zstd-3 decompress = {rows[5][1] / rows[2][1]:.2f}")
        print(f"sizes: zstd -3 {zsize / size:.3f} of the file; corafs both versions "
              f"{st.disk_bytes / size:.3f} of one file ({st.keyframes} keyframes, "
              f"{st.deltas} deltas)")
        print("aims: ingest >= 150 MB/s, decode >= 400 MB/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Ingest and decode throughput of a ~1 GiB checkpoint, side by side with `zstd -3` of the same
file and a plain copy, on this machine.

  python benchmarks/bench_speed.py [--size-mib 1024]

Ingest = parse + hash + encode + write (Repository.commit); the real `corafs commit` of the
keyframe version (process start included) beside a copy made durable (copy + fsync); decode = full read of the file from
a fresh Repository (nothing cached), sha256-verified. Two versions are measured: a keyframe
version and a fine-tuned version stored as deltas against it."""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import safetensors.numpy
import zstandard

from corafs import Repository

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, corafs, drop_caches, timed, workdir  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    a = ap.parse_args()
    rep = Report("speed", size_mib=a.size_mib)
    with workdir("speed") as tmp:
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
            zlabel = "zstd -3 CLI (1 thread)"
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
            zlabel = "zstd -3 (python zstandard, 1 thread)"
        rows.append((f"{zlabel}: compress", mb / t))
        rows.append((f"{zlabel}: decompress", mb / t2))
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
        # the real command, process start included, against a copy made durable (cp + sync)
        cli_repo = os.path.join(tmp, "cli-repo")
        corafs("init", cli_repo)
        drop_caches()
        t, _ = timed(lambda: corafs("commit", cli_repo, src, "-m", "keyframe"))
        rows.append(("corafs commit (CLI), keyframe version", mb / t))
        shutil.rmtree(cli_repo)
        drop_caches()

        def copy_sync():
            shutil.copyfile(src, os.path.join(tmp, "copy"))
            fd = os.open(os.path.join(tmp, "copy"), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        t, _ = timed(copy_sync)
        os.unlink(os.path.join(tmp, "copy"))
        rows.append(("copy + fsync", mb / t))

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

        v = dict(rows)
        cp, zc, zd = v["plain copy (shutil.copyfile)"], v[f"{zlabel}: compress"], \
            v[f"{zlabel}: decompress"]
        for what, mbs in rows:
            base = {"corafs ingest, keyframe version": (cp, "plain copy"),
                    "corafs commit (CLI), keyframe version": (v["copy + fsync"],
                                                              "copy + fsync"),
                    "corafs decode (byte-exact), keyframe version": (zd, f"{zlabel}: decompress"),
                    "corafs decode (byte-exact), fine-tune (deltas)": (zd,
                                                                       f"{zlabel}: decompress")
                    }.get(what)
            aim = ">= 150 MB/s" if "ingest" in what else (">= 400 MB/s" if "decode" in what
                                                           else "")
            if what.startswith("corafs commit (CLI)"):
                aim = ">= 300 MB/s"
            if base:
                rep.row(what, mbs, "MB/s", baseline=base[0], baseline_what=base[1], aim=aim)
            else:
                rep.row(what, mbs, "MB/s", aim=aim)
        rep.row("ingest keyframe vs zstd -3 compress", v["corafs ingest, keyframe version"],
                "MB/s", baseline=zc, baseline_what=f"{zlabel}: compress")
        rep.row("stored, both versions, of one file", st.disk_bytes / size, "x",
                baseline=zsize / size, baseline_what="zstd -3 of one file",
                keyframes=st.keyframes, deltas=st.deltas)
    rep.done(f"checkpoint: {size / 2**20:.0f} MiB safetensors, fp32, {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())

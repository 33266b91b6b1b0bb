"""Write performance of the mount, side by side with the CLI, in one run.

* `cp` of a 1 GiB .safetensors fine-tune of an already committed model into the mount, until
  the commit is visible, against `cp` of the same file to local disk followed by
  `corafs commit` of it (into an identical repository); stored sizes compared;
* peak daemon RSS while ingesting a 4 GiB checkpoint copied into the mount (aim < 1 GiB).

  python benchmarks/bench_mount_write.py [--skip-4g]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import safetensors.numpy

from corafs import Repository


def corafs(*args):
    subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def model(path, mib, seed=0, base=None, noise=0.0):
    rng = np.random.default_rng(seed)
    per = 32 << 20
    out = {}
    for i in range((mib << 20) // per):
        t = (rng.standard_normal(per // 4, dtype=np.float32) * 0.02 if base is None else
             base[f"layer{i}"].reshape(-1) + rng.standard_normal(per // 4, dtype=np.float32) * noise)
        out[f"layer{i}"] = t.reshape(-1, 1024)
    safetensors.numpy.save_file(out, str(path))
    return out


def head(repo):
    with Repository(repo) as r:
        return r.head("main")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-4g", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corafs-bench-write-", dir=os.environ.get("BENCH_DIR"))
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    try:
        base_f, tuned_f = os.path.join(tmp, "base.safetensors"), os.path.join(tmp, "tuned.safetensors")
        base = model(base_f, 1024)
        model(tuned_f, 1024, seed=1, base=base, noise=1e-4)
        del base
        size = os.path.getsize(tuned_f)
        repos = {}
        for name in ("cli", "mount"):
            repos[name] = os.path.join(tmp, f"repo-{name}")
            Repository.init(repos[name]).close()
            with Repository(repos[name]) as r:
                r.commit("main", {"model.safetensors": base_f})
        subprocess.run(["sync"])

        local = os.path.join(tmp, "local", "model.safetensors")
        os.makedirs(os.path.dirname(local))
        t = time.perf_counter()
        shutil.copyfile(tuned_f, local)
        t_cp = time.perf_counter() - t
        corafs_t = time.perf_counter()
        corafs("commit", repos["cli"], local)
        t_commit = time.perf_counter() - corafs_t
        os.unlink(local)

        corafs("mount", repos["mount"], mnt, "--commit-delay", "0.2")
        pid = int(os.getxattr(mnt, "user.corafs.pid"))
        before = head(repos["mount"])
        t = time.perf_counter()
        shutil.copyfile(tuned_f, f"{mnt}/main/model.safetensors")
        t_mcp = time.perf_counter() - t
        while head(repos["mount"]) == before:
            time.sleep(0.02)
        t_mount = time.perf_counter() - t
        rss1 = peak_rss_mb(pid)
        corafs("umount", mnt)

        sizes = {}
        for name, repo in repos.items():
            with Repository(repo) as r:
                st = r.stats()
                sizes[name] = st.stored_bytes
                assert r.read_file("main:model.safetensors") == open(tuned_f, "rb").read()
        mb = size / 1e6
        base_t = t_cp + t_commit
        print(f"\n1 GiB fine-tune written into a repository holding its base ({os.cpu_count()} cores)")
        print(f"{'path':<58} {'seconds':>8} {'MB/s':>7}")
        print(f"{'local cp':<58} {t_cp:8.2f} {mb / t_cp:7.0f}")
        print(f"{'corafs commit (CLI) of the copy':<58} {t_commit:8.2f} {mb / t_commit:7.0f}")
        print(f"{'baseline: cp + corafs commit':<58} {base_t:8.2f} {mb / base_t:7.0f}")
        print(f"{'mount: cp returns':<58} {t_mcp:8.2f} {mb / t_mcp:7.0f}")
        print(f"{'mount: cp until the commit is visible (commit-delay 0.2 s)':<58} {t_mount:8.2f} "
              f"{mb / t_mount:7.0f}")
        print(f"\nthroughput ratio mount / baseline = {base_t / t_mount:.2f} (aim >= 0.5); stored "
              f"bytes: CLI {sizes['cli']}, mount {sizes['mount']} (equal: {sizes['cli'] == sizes['mount']})")
        print(f"daemon peak RSS during the 1 GiB ingest: {rss1:.0f} MB")

        if not a.skip_4g:
            big = os.path.join(tmp, "big.safetensors")
            model(big, 4096, seed=3)
            repo4 = os.path.join(tmp, "repo-4g")
            Repository.init(repo4).close()
            corafs("mount", repo4, mnt, "--commit-delay", "0.2")
            pid = int(os.getxattr(mnt, "user.corafs.pid"))
            before = head(repo4)
            t = time.perf_counter()
            shutil.copyfile(big, f"{mnt}/main/big.safetensors")
            while head(repo4) == before:
                time.sleep(0.05)
            el = time.perf_counter() - t
            rss = peak_rss_mb(pid)
            corafs("umount", mnt)
            print(f"4 GiB checkpoint into the mount: {el:.1f} s until committed "
                  f"({4096 * 1.048576 / el:.0f} MB/s); daemon peak RSS {rss:.0f} MB (aim < 1024)")
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

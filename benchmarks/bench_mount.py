"""Read performance of the mount, side by side with local disk, in one run.

* cold `cat > /dev/null` of a 1 GiB .safetensors stored as deltas against an earlier version
  (fresh mount, decoded from the store) vs the same file on local disk after drop_caches;
  warm (second read) vs the local file from the page cache;
* torch.load of a ~500 MB state dict, cold, mount vs local disk;
* safe_open + get_tensor of one tensor of the 1 GiB file: bytes decoded vs file size;
* ls -l of @history/main with 1,000 commits, and mount-ready time for that repository;
* daemon peak RSS while reading a 4 GiB checkpoint, against --cache-size + 200 MB.

  python benchmarks/bench_mount.py [--skip-4g]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import safetensors
import safetensors.numpy

from corafs import Repository

CACHE = "512M"


def drop_caches():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        print("(cannot drop caches: not root?)")


def corafs(*args):
    subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def timed_cat(path):
    t = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - t


def model(path, mib, seed=0, base=None, noise=0.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    per = 32 << 20
    out = {}
    for i in range((mib << 20) // per):
        if base is None:
            t = rng.standard_normal(per // 4, dtype=np.float32) * 0.02
        else:
            t = base[f"layer{i}"].reshape(-1) + rng.standard_normal(per // 4, dtype=np.float32) * noise
        out[f"layer{i}"] = t.reshape(-1, 1024)
    safetensors.numpy.save_file(out, str(path))
    return out


class Mount:
    def __init__(self, repo, mnt):
        self.repo, self.mnt = repo, mnt

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        t = time.perf_counter()
        corafs("mount", self.repo, self.mnt, "--cache-size", CACHE)
        self.ready = time.perf_counter() - t
        self.pid = int(os.getxattr(self.mnt, "user.corafs.pid"))
        return self

    def stats(self):
        raw = os.getxattr(self.mnt, "user.corafs.stats").decode()
        return dict(kv.split("=") for kv in raw.split())

    def peak_rss_mb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024

    def __exit__(self, *exc):
        corafs("umount", self.mnt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-4g", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corafs-bench-mount-", dir=os.environ.get("BENCH_DIR"))
    rows = []
    try:
        repo = os.path.join(tmp, "repo")
        Repository.init(repo).close()
        base_f, tuned_f = os.path.join(tmp, "base.safetensors"), os.path.join(tmp, "tuned.safetensors")
        base = model(base_f, 1024)
        model(tuned_f, 1024, seed=1, base=base, noise=1e-4)
        del base
        with Repository(repo) as r:
            r.commit("main", {"model.safetensors": base_f})
            r.commit("main", {"model.safetensors": tuned_f})
            st = r.stats()
        size = os.path.getsize(tuned_f)
        mb = size / 1e6

        # cold and warm reads
        drop_caches()
        local_cold = timed_cat(tuned_f)
        local_warm = timed_cat(tuned_f)
        drop_caches()
        with Mount(repo, os.path.join(tmp, "mnt")) as m:
            p = f"{m.mnt}/main/model.safetensors"
            mount_cold = timed_cat(p)
            mount_warm = timed_cat(p)
        rows += [("cold cat, 1 GiB deltas: local disk (drop_caches)", mb / local_cold, None),
                 ("cold cat, 1 GiB deltas: corafs mount", mb / mount_cold, mount_cold / local_cold),
                 ("warm cat: local page cache", mb / local_warm, None),
                 ("warm cat: corafs mount (keep_cache)", mb / mount_warm, mount_warm / local_warm)]

        # one tensor out of the 1 GiB file
        drop_caches()
        with Mount(repo, os.path.join(tmp, "mnt")) as m:
            before = int(m.stats()["decoded_bytes"])
            with safetensors.safe_open(f"{m.mnt}/main/model.safetensors", "np") as f:
                f.get_tensor("layer7")
            touched = int(m.stats()["decoded_bytes"]) - before
        rows.append((f"safe_open+get_tensor of 1 of 32 tensors: decoded {touched / 2**20:.0f} MiB",
                     None, touched / size))

        # torch.load of ~500 MB
        import torch
        sd = {f"w{i}": torch.randn(4096, 4096) for i in range(8)}     # 512 MiB
        pth = os.path.join(tmp, "sd.pth")
        torch.save(sd, pth)
        sd2 = {k: v + torch.randn_like(v) * 1e-4 for k, v in sd.items()}
        pth2 = os.path.join(tmp, "sd2.pth")
        torch.save(sd2, pth2)
        del sd, sd2
        with Repository(repo) as r:
            r.commit("main", {"sd.pth": pth})
            r.commit("main", {"sd.pth": pth2})
        drop_caches()
        t = time.perf_counter()
        torch.load(pth2, weights_only=True)
        local_load = time.perf_counter() - t
        drop_caches()
        with Mount(repo, os.path.join(tmp, "mnt")) as m:
            t = time.perf_counter()
            torch.load(f"{m.mnt}/main/sd.pth", weights_only=True)
            mount_load = time.perf_counter() - t
        rows += [("torch.load 512 MiB (deltas): local disk cold, s", local_load, None),
                 ("torch.load 512 MiB (deltas): corafs mount cold, s", mount_load,
                  mount_load / local_load)]

        # 1,000 commits
        hrepo = os.path.join(tmp, "hrepo")
        Repository.init(hrepo).close()
        small = os.path.join(tmp, "small.json")
        with Repository(hrepo) as r:
            for i in range(999):
                with open(small, "w") as f:
                    f.write(f'{{"step": {i}}}')
                r.commit("main", {"config.json": small})
        with Mount(hrepo, os.path.join(tmp, "hmnt")) as m:
            t = time.perf_counter()
            out = subprocess.run(["ls", "-l", f"{m.mnt}/@history/main"], capture_output=True,
                                 check=True).stdout
            ls_time = time.perf_counter() - t
            n = len(out.splitlines()) - 1
            ready = m.ready
        rows += [(f"ls -l @history/main ({n} commits), s", ls_time, None),
                 ("corafs mount ready (1,000 commits, incl. CLI start), s", ready, None)]

        if not a.skip_4g:
            big = os.path.join(tmp, "big.safetensors")
            model(big, 4096, seed=3)
            with Repository(repo) as r:
                r.commit("main", {"big.safetensors": big})
            os.unlink(big)
            drop_caches()
            with Mount(repo, os.path.join(tmp, "mnt")) as m:
                t = time.perf_counter()
                timed_cat(f"{m.mnt}/main/big.safetensors")
                el = time.perf_counter() - t
                rss = m.peak_rss_mb()
            rows.append(("4 GiB cold cat through mount, MB/s", 4096 * 1.048576 / el, None))
            rows.append((f"daemon peak RSS MB (limit {CACHE} cache + 200 MB = 712)", rss, None))

        print(f"\n{'measure':<62} {'value':>10} {'ratio':>8}")
        for k, v, r in rows:
            vs = f"{v:10.2f}" if isinstance(v, float) and v < 100 else (f"{v:10.0f}" if v is not None else f"{'':>10}")
            rs = f"{r:8.3f}" if r is not None else ""
            print(f"{k:<62} {vs} {rs}")
        print("\nratios: time(mount)/time(local) for reads and loads (aims: cold read time <= 2x "
              "local, i.e. speed >= 0.5x; warm <= 1.25x; torch.load <= 1.5x); decoded/size for "
              f"get_tensor (aim < 0.10). Store: {st.deltas} delta and {st.keyframes} keyframe blocks.")
    finally:
        for d in ("mnt", "hmnt"):
            p = os.path.join(tmp, d)
            if os.path.ismount(p):
                subprocess.run(["fusermount3", "-u", "-z", p])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

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
import subprocess
import sys

import numpy as np
import safetensors
import safetensors.numpy

from corafs import Repository

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, drop_caches, mounted, timed, workdir  # noqa: E402

CACHE = "512M"


def timed_cat(path):
    return timed(subprocess.run, f"cat '{path}' > /dev/null", shell=True, check=True)[0]


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-4g", action="store_true")
    a = ap.parse_args()
    rep = Report("mount", skip_4g=a.skip_4g, cache=CACHE)
    with workdir("mount") as tmp:
        repo = os.path.join(tmp, "repo")
        Repository.init(repo).close()
        base_f, tuned_f = os.path.join(tmp, "base.safetensors"), os.path.join(tmp, "tuned.safetensors")
        base = model(base_f, 1024)
        model(tuned_f, 1024, seed=1, base=base, noise=1e-4)
        del base
        with Repository(repo) as r:
            r.background_reencode = False         # as the CLI does: re-encoded before the
            r.commit("main", {"model.safetensors": base_f})
            r.commit("main", {"model.safetensors": tuned_f})
            r.reencode()                           # measurement, not during it
            st = r.stats()
        size = os.path.getsize(tuned_f)
        mb = size / 1e6

        # cold and warm reads
        drop_caches()
        local_cold = timed_cat(tuned_f)
        local_warm = timed_cat(tuned_f)
        drop_caches()
        with mounted(repo, os.path.join(tmp, "mnt"), "--cache-size", CACHE) as m:
            p = f"{m}/main/model.safetensors"
            mount_cold = timed_cat(p)
            mount_warm = timed_cat(p)
        rep.row("cold cat of the 1 GiB head (a fine-tune of the version before), mount", mount_cold, "s",
                baseline=local_cold, baseline_what="local disk after drop_caches",
                aim="ratio <= 2", mb_s=mb / mount_cold)
        rep.row("warm cat (second read), through the mount", mount_warm, "s",
                baseline=local_warm, baseline_what="local page cache", aim="ratio <= 1.25",
                mb_s=mb / mount_warm)

        # one tensor out of the 1 GiB file
        drop_caches()
        with mounted(repo, os.path.join(tmp, "mnt"), "--cache-size", CACHE) as m:
            before = m.stats()["decoded_bytes"]
            with safetensors.safe_open(f"{m}/main/model.safetensors", "np") as f:
                f.get_tensor("layer7")
            touched = m.stats()["decoded_bytes"] - before
        rep.row("safe_open + get_tensor of 1 of 32 tensors: bytes decoded", touched / 2**20,
                "MiB", baseline=size / 2**20, baseline_what="file size", aim="ratio < 0.10")

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
            r.background_reencode = False
            r.commit("main", {"sd.pth": pth})
            r.commit("main", {"sd.pth": pth2})
            r.reencode()
        drop_caches()
        local_load = timed(torch.load, pth2, weights_only=True)[0]
        drop_caches()
        with mounted(repo, os.path.join(tmp, "mnt"), "--cache-size", CACHE) as m:
            mount_load = timed(torch.load, f"{m}/main/sd.pth", weights_only=True)[0]
        rep.row("torch.load of 512 MiB stored as deltas, cold, through the mount", mount_load,
                "s", baseline=local_load, baseline_what="local disk, cold", aim="ratio <= 1.5")

        # 1,000 commits
        hrepo = os.path.join(tmp, "hrepo")
        Repository.init(hrepo).close()
        small = os.path.join(tmp, "small.json")
        with Repository(hrepo) as r:
            for i in range(999):
                with open(small, "w") as f:
                    f.write(f'{{"step": {i}}}')
                r.commit("main", {"config.json": small})
        with mounted(hrepo, os.path.join(tmp, "hmnt"), "--cache-size", CACHE) as m:
            ls_time, out = timed(subprocess.run, ["ls", "-l", f"{m}/@history/main"],
                                 capture_output=True, check=True)
            n = len(out.stdout.splitlines()) - 1
            ready = m.ready
        rep.row(f"ls -l @history/main ({n} commits)", ls_time, "s")
        rep.row("corafs mount ready (1,000 commits, incl. CLI start)", ready, "s")

        if not a.skip_4g:
            big = os.path.join(tmp, "big.safetensors")
            model(big, 4096, seed=3)
            with Repository(repo) as r:
                r.commit("main", {"big.safetensors": big})
            os.unlink(big)
            drop_caches()
            with mounted(repo, os.path.join(tmp, "mnt"), "--cache-size", CACHE) as m:
                el = timed_cat(f"{m}/main/big.safetensors")
                rss = m.peak_rss_mb()
            rep.row("4 GiB cold cat through the mount", 4096 * 1.048576 / el, "MB/s")
            rep.row("daemon peak RSS reading it", rss, "MB", baseline=712,
                    baseline_what=f"{CACHE} cache + 200 MB", aim="ratio <= 1")

        rep.done(f"Store: {st.deltas} delta and {st.keyframes} keyframe blocks; ratios are "
                 "time(mount) / time(local)")


if __name__ == "__main__":
    main()

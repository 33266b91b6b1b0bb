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
import time

import numpy as np
import safetensors.numpy

from corafs import Repository

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, corafs, mounted, timed, workdir  # noqa: E402


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


def until_committed(repo, before, interval=0.02) -> None:
    """Poll the branch head: what is timed here is how soon the commit becomes visible."""
    while head(repo) == before:
        time.sleep(interval)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-4g", action="store_true")
    a = ap.parse_args()
    rep = Report("mount_write", skip_4g=a.skip_4g)
    with workdir("write") as tmp:
        mnt = os.path.join(tmp, "mnt")
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
        t_cp = timed(shutil.copyfile, tuned_f, local)[0]
        t_commit = timed(corafs, "commit", repos["cli"], local)[0]
        os.unlink(local)

        with mounted(repos["mount"], mnt, "--commit-delay", "0.2") as m:
            before = head(repos["mount"])
            t = time.perf_counter()
            shutil.copyfile(tuned_f, f"{m}/main/model.safetensors")
            t_mcp = time.perf_counter() - t
            until_committed(repos["mount"], before)
            t_mount = time.perf_counter() - t
            rss1 = m.peak_rss_mb()

        sizes = {}
        for name, repo in repos.items():
            with Repository(repo) as r:
                sizes[name] = r.stats().stored_bytes
                assert r.read_file("main:model.safetensors") == open(tuned_f, "rb").read()
        # the daemon re-encodes the replaced version in the background; what unmount cut
        # short stays queued and the next command finishes it (here: the API)
        with Repository(repos["mount"]) as r:
            r.reencode()
            sizes["mount, re-encoded"] = r.stats().stored_bytes
        mb = size / 1e6
        base_t = t_cp + t_commit
        rep.row("1 GiB fine-tune: cp into the mount until the commit is visible", t_mount, "s",
                baseline=base_t, baseline_what="local cp + corafs commit",
                aim="ratio <= 2 (throughput >= 0.5x)", mb_s=mb / t_mount)
        rep.row("mount: cp returns", t_mcp, "s", mb_s=mb / t_mcp)
        rep.row("local cp", t_cp, "s", mb_s=mb / t_cp)
        rep.row("corafs commit (CLI) of the copy", t_commit, "s", mb_s=mb / t_commit)
        rep.row("stored bytes, through the mount, at unmount", sizes["mount"], "B",
                baseline=sizes["cli"], baseline_what="through the CLI")
        rep.row("stored bytes, through the mount, queued re-encoding done",
                sizes["mount, re-encoded"], "B", baseline=sizes["cli"],
                baseline_what="through the CLI", aim="equal")
        rep.row("daemon peak RSS during the 1 GiB ingest", rss1, "MB")

        if not a.skip_4g:
            big = os.path.join(tmp, "big.safetensors")
            model(big, 4096, seed=3)
            repo4 = os.path.join(tmp, "repo-4g")
            Repository.init(repo4).close()
            with mounted(repo4, mnt, "--commit-delay", "0.2") as m:
                before = head(repo4)
                t = time.perf_counter()
                shutil.copyfile(big, f"{m}/main/big.safetensors")
                until_committed(repo4, before, 0.05)
                el = time.perf_counter() - t
                rss = m.peak_rss_mb()
            rep.row("4 GiB checkpoint into the mount until committed", el, "s",
                    mb_s=4096 * 1.048576 / el)
            rep.row("daemon peak RSS during the 4 GiB ingest", rss, "MB", aim="< 1024")
    rep.done(f"1 GiB fine-tune written into a repository holding its base "
             f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

"""Many small files into a branch (issue 8, item 7): the cost of one create must not grow with
the number of files already staged. Side by side in one run: the same files created on the
local disk the repository lives on (ext4 here) and in a branch directory of a mount, timed per
batch of 250, then `git clone` of a repository with many files into both.

  python benchmarks/bench_mount_create.py [--files 2000]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def corafs(*args):
    subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def create(root: str, n: int, batch: int) -> list[float]:
    """ms per file, for each batch of ``batch`` files (write 1 KiB, close)."""
    out = []
    payload = os.urandom(1024)
    for b in range(0, n, batch):
        d = os.path.join(root, f"d{b // batch:03d}")
        os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        for i in range(b, min(n, b + batch)):
            with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
                f.write(payload)
        out.append((time.perf_counter() - t0) * 1000 / batch)
    return out


def git_source(root: str, n: int) -> str:
    src = os.path.join(root, "gitsrc")
    os.makedirs(src)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    subprocess.run(["git", "init", "-q", src], check=True)
    for i in range(n):
        sub = os.path.join(src, f"pkg{i % 20}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"m{i}.py"), "w") as f:
            f.write(f"x = {i}\n" * 20)
    subprocess.run(["git", "-C", src, "add", "."], check=True)
    subprocess.run(["git", "-C", src, "commit", "-qm", "init"], check=True, env=env)
    return src


def timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="corafs-bench-create-", dir=os.environ.get("TMPDIR"))
    try:
        repo, mnt, local = (os.path.join(work, x) for x in ("repo", "mnt", "local"))
        os.makedirs(mnt)
        os.makedirs(local)
        corafs("init", repo)
        corafs("mount", repo, mnt, "--commit-delay", "600")   # all stay staged: worst case
        try:
            disk = create(local, a.files, a.batch)
            fuse = create(os.path.join(mnt, "main"), a.files, a.batch)
            src = git_source(work, 1000)
            t_local = timed(["git", "clone", "-q", src, os.path.join(local, "clone")])
            t_mount = timed(["git", "clone", "-q", src, os.path.join(mnt, "main", "clone")])
        finally:
            corafs("umount", mnt)
        print(f"creating {a.files} files of 1 KiB, ms per file by batch of {a.batch} "
              f"(files already staged before the batch)")
        print(f"{'staged before':>14} {'local disk':>11} {'corafs mount':>13} {'ratio':>7}")
        for i, (l, m) in enumerate(zip(disk, fuse)):
            print(f"{i * a.batch:>14} {l:>11.3f} {m:>13.3f} {m / l:>7.1f}")
        print(f"per-file cost, last batch / first batch: local {disk[-1] / disk[0]:.2f}, "
              f"mount {fuse[-1] / fuse[0]:.2f} (flat = 1)")
        print(f"git clone of 1,000 files: local {t_local:.2f} s, mount {t_mount:.2f} s, "
              f"ratio {t_mount / t_local:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

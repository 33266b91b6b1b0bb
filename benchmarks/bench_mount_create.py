"""Many small files into a branch (issue 8, item 7): the cost of one create must not grow with
the number of files already staged. Side by side in one run: the same files created on the
local disk the repository lives on (ext4 here) and in a branch directory of a mount, timed per
batch of 250, then `git clone` of a repository with many files into both.

  python benchmarks/bench_mount_create.py [--files 2000]
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, corafs, mounted, timed, workdir  # noqa: E402


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


def run(cmd) -> float:
    return timed(subprocess.run, cmd, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    a = ap.parse_args()
    rep = Report("mount_create", files=a.files, batch=a.batch)
    with workdir("create") as work:
        repo, mnt, local = (os.path.join(work, x) for x in ("repo", "mnt", "local"))
        os.makedirs(local)
        corafs("init", repo)
        with mounted(repo, mnt, "--commit-delay", "600") as m:   # all stay staged: worst case
            disk = create(local, a.files, a.batch)
            fuse = create(os.path.join(m, "main"), a.files, a.batch)
            src = git_source(work, 1000)
            t_local = run(["git", "clone", "-q", src, os.path.join(local, "clone")])
            t_mount = run(["git", "clone", "-q", src, os.path.join(m, "main", "clone")])
        for i, (lo, mo) in enumerate(zip(disk, fuse)):
            rep.row(f"create 1 KiB file, {i * a.batch} already staged", mo, "ms",
                    baseline=lo, baseline_what="local disk")
        rep.row("per-file cost, last batch / first batch, mount", fuse[-1] / fuse[0], "x",
                baseline=disk[-1] / disk[0], baseline_what="same on local disk",
                aim="flat (1)")
        rep.row("git clone of 1,000 files into a branch", t_mount, "s", baseline=t_local,
                baseline_what="local disk")
    rep.done()


if __name__ == "__main__":
    main()

"""The mount daemon dying at any step of storing and committing a copied file: the repository
stays consistent, every earlier commit stays byte-exact, and the file, whose copy had
completed, is committed by the next mount, never silently dropped.

Deterministic: the daemon runs with ``CORAFS_FAULT`` (corafs/store/faults.py), which ends it
just before its n-th object put, batch seal, ref move or step inside writing a pack file, for
n = 1, 2, ... until it commits
without meeting the fault; each trial starts from the same repository state."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from conftest import sha256_bytes, sha256_file
from corafs import Repository
from mountutil import corafs, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("event", ["put", "seal", "ref", "pack"])
def test_daemon_killed_at_every_step_of_a_commit(tmp_path, event):
    seed, mnt, src = tmp_path / "seed", tmp_path / "mnt", tmp_path / "src"
    corafs("init", seed)
    os.makedirs(mnt)
    src.mkdir()
    base = np.random.default_rng(0).standard_normal((512, 1024), dtype=np.float32)
    safetensors.numpy.save_file({"w": base}, str(src / "v0.safetensors"))
    corafs("commit", seed, src / "v0.safetensors")
    with Repository(seed) as r:
        v0 = r.head("main")
    v0_sha = sha256_file(src / "v0.safetensors")
    f = src / "ckpt.safetensors"
    safetensors.numpy.save_file({"w": base + 1e-3, "step": np.array([1])}, str(f))
    want = sha256_file(f)
    n, crashed = 0, 0
    while True:
        n += 1
        assert n < 100
        repo = tmp_path / f"r{n}"
        shutil.copytree(seed, repo)
        env = dict(os.environ, CORAFS_FAULT=f"{event}:{n}")
        p = subprocess.run([sys.executable, "-m", "corafs", "mount", str(repo), str(mnt),
                            "--commit-delay", "0.05"], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        pid = int(os.getxattr(mnt, "user.corafs.pid"))
        try:
            shutil.copyfile(f, mnt / "main" / "ckpt.safetensors")
        except OSError:
            pass                               # the daemon died under the copy's close
        # either the daemon meets the fault and dies, or it commits the file
        assert wait_for(lambda: not _alive(pid) or settled(repo), timeout=60)
        died = not _alive(pid)
        if died:
            crashed += 1
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            assert wait_for(lambda: not os.path.ismount(mnt), timeout=10)
            corafs("mount", repo, mnt)         # recovery and cleanup happen here
        corafs("umount", mnt)
        fsck = corafs("fsck", repo, check=False)
        assert fsck.returncode == 0 and "garbage" not in fsck.stdout, (event, n, fsck.stdout)
        with Repository(repo) as r:
            assert sha256_bytes(r.read_file(f"{v0}:v0.safetensors")) == v0_sha
            assert "ckpt.safetensors" in r.listdir(r.head("main")), \
                (event, n, corafs("status", repo).stdout)
            assert sha256_bytes(r.read_file("main:ckpt.safetensors")) == want, (event, n)
        shutil.rmtree(repo)
        if not died:
            break
    assert crashed >= 1, "the fault was never reached"

"""SIGKILL the mount daemon at random moments during copies (20 trials): the repository stays
consistent, every earlier commit stays byte-exact, and a file whose copy had completed is
committed on the next mount or reported by `corafs status`, never silently dropped."""
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import safetensors.numpy

from conftest import sha256_bytes, sha256_file
from corafs import Repository
from mountutil import corafs, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]

TRIALS = 20


def test_sigkill_daemon_during_copies(tmp_path):
    repo, mnt, src = tmp_path / "repo", tmp_path / "mnt", tmp_path / "src"
    corafs("init", repo)
    os.makedirs(mnt)
    src.mkdir()
    rng = random.Random(7)
    base = np.random.default_rng(0).standard_normal((512, 1024), dtype=np.float32)
    verified: dict[str, str] = {}      # "commit:path" -> sha256, checked after every trial
    completed_before_kill: dict[str, str] = {}
    outcomes = {"committed": 0, "reported": 0, "interrupted": 0}
    for trial in range(TRIALS):
        f = src / f"ckpt{trial}.safetensors"
        noise = np.random.default_rng(trial).standard_normal(base.shape, dtype=np.float32)
        safetensors.numpy.save_file({"w": base + noise * 1e-3, "step": np.array([trial])}, str(f))
        want = sha256_file(f)
        corafs("mount", repo, mnt, "--commit-delay", str(rng.choice([0.05, 0.3, 1.0])))
        pid = int(os.getxattr(mnt, "user.corafs.pid"))
        done = {}

        def copy():
            try:
                with open(f, "rb") as fi, open(f"{mnt}/main/ckpt{trial}.safetensors", "wb") as fo:
                    while chunk := fi.read(64 << 10):     # paced like a slow writer
                        fo.write(chunk)
                        time.sleep(0.01)
                done["at"] = time.monotonic()
            except OSError:
                pass

        t = threading.Thread(target=copy)
        t.start()
        time.sleep(rng.uniform(0.0, 1.2))
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t.join(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        assert wait_for(lambda: not os.path.ismount(mnt), timeout=10)
        if "at" in done and done["at"] < killed_at:
            completed_before_kill[f"ckpt{trial}.safetensors"] = want

        corafs("mount", repo, mnt)                     # recovery and cleanup happen here
        corafs("umount", mnt)
        fsck = corafs("fsck", repo, check=False)
        assert fsck.returncode == 0 and "garbage" not in fsck.stdout, fsck.stdout
        with Repository(repo) as r:
            for spec, sha in verified.items():
                assert sha256_bytes(r.read_file(spec)) == sha, spec
            head = r.head("main")
            names = set(r.listdir(head))
            name = f"ckpt{trial}.safetensors"
            if name in names:                          # committed means whole, always
                got = sha256_bytes(r.read_file(f"main:{name}"))
                assert got == want, f"{name} was committed torn"
                verified[f"{head}:{name}"] = want
                outcomes["committed"] += 1
            status = corafs("status", repo).stdout
            if name in completed_before_kill and name not in names:
                assert name in status, f"{name} was fully copied but is neither committed " \
                                       f"nor reported:\n{status}"
                outcomes["reported"] += 1
            elif name not in names:
                outcomes["interrupted"] += 1
    assert outcomes["committed"] >= 3, outcomes
    assert outcomes["interrupted"] + outcomes["reported"] >= 1, outcomes

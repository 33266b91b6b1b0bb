"""A commit process killed with SIGKILL at random points leaves a consistent repository:
fsck passes, every earlier commit exports byte-exact, no half commit is visible."""
import random
import signal
import subprocess
import sys
import time

import numpy as np
import safetensors.numpy

from corafs import Repository
from conftest import sha256_bytes, sha256_file

TRIALS = 20


def _model(path, seed):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    safetensors.numpy.save_file({
        "w": base + rng.standard_normal(base.shape, dtype=np.float32) * 1e-3,
        "b": rng.standard_normal(4096, dtype=np.float32),
        "e": np.random.default_rng(1).standard_normal((512, 1024), dtype=np.float32),
    }, str(path))


def test_sigkill_during_commit_keeps_repository_consistent(tmp_path):
    repo_path = str(tmp_path / "repo")
    Repository.init(repo_path).close()
    work = tmp_path / "w"
    work.mkdir()
    known: dict[str, dict[str, str]] = {}   # commit id -> {path: sha256}
    rng = random.Random(1234)
    landed = killed = 0
    for trial in range(TRIALS):
        src = work / "model.safetensors"
        _model(src, trial)
        want = sha256_file(src)
        with Repository(repo_path) as r:
            before = r.head("main")
        p = subprocess.Popen([sys.executable, "-m", "corafs", "commit", repo_path, str(src),
                              "-m", f"trial {trial}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        with Repository(repo_path) as r:
            head = r.head("main")
            if head != before:                       # the commit landed: it must be whole
                landed += 1
                assert r.commit_obj(head).parents == (before,)
                assert sha256_bytes(r.read_file("main:model.safetensors")) == want
                known[head] = {"model.safetensors": want}
            rep = r.fsck()
            assert rep.ok, rep.problems                # leftovers are garbage, not problems
            for cid, files in known.items():
                for path, sha in files.items():
                    assert sha256_bytes(r.read_file(f"{cid}:{path}")) == sha
    assert killed >= 5, f"only {killed} of {TRIALS} trials were killed mid-way"
    assert landed >= 1

"""A commit process that dies at any step leaves a consistent repository: fsck passes, every
earlier commit exports byte-exact, no half commit is visible, and the next commit goes through.

Deterministic: the fault-injecting store (corafs/store/faults.py) stops the process just
before its n-th object put, batch seal, ref move or step inside writing a pack file (``pack``:
the killed-inside-pack-writing cases), for n = 1, 2, ... until the command runs
to its end, so every step of a commit (and of the re-encoding the CLI runs after it) is hit
exactly once, whatever the machine's speed."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from corafs import Repository
from corafs.store.faults import FAULT_EXIT
from conftest import sha256_bytes, sha256_file


def _model(path, seed):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    safetensors.numpy.save_file({
        "w": base + rng.standard_normal(base.shape, dtype=np.float32) * 1e-3,
        "b": rng.standard_normal(4096, dtype=np.float32),
        "e": np.random.default_rng(1).standard_normal((512, 1024), dtype=np.float32),
    }, str(path))


def _commit(repo_path, src, msg, fault=None):
    env = dict(os.environ)
    env.pop("CORAFS_FAULT", None)
    if fault:
        env["CORAFS_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "corafs", "commit", repo_path, str(src),
                           "-m", msg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env)


@pytest.mark.parametrize("event", ("put", "seal", "ref", "pack"))
def test_a_commit_killed_at_every_step_keeps_the_repository_consistent(tmp_path, event):
    """The same commit (of a second version, so it re-encodes the first) from the same
    repository state, stopped before its n-th step of one kind, for every n."""
    seed = str(tmp_path / "seed")
    Repository.init(seed).close()
    src = tmp_path / "model.safetensors"
    _model(src, 0)
    assert _commit(seed, src, "v0").returncode == 0
    with Repository(seed) as r:
        v0 = r.head("main")
    v0_sha = sha256_file(src)
    _model(src, 1)
    want = sha256_file(src)
    n = 0
    while True:
        n += 1
        assert n < 100, "a commit should not take this many steps"
        repo_path = str(tmp_path / f"r{n}")
        shutil.copytree(seed, repo_path)
        p = _commit(repo_path, src, "v1", f"{event}:{n}")
        assert p.returncode in (0, FAULT_EXIT), p.stderr
        with Repository(repo_path) as r:
            head = r.head("main")
            assert head in (v0,) or r.commit_obj(head).parents == (v0,), (event, n)
            if head != v0:                      # the commit landed: it must be whole
                assert sha256_bytes(r.read_file("main:model.safetensors")) == want
            assert sha256_bytes(r.read_file(f"{v0}:model.safetensors")) == v0_sha
            rep = r.fsck()
            assert rep.ok, (event, n, rep.problems)     # leftovers are garbage, not problems
        if p.returncode == 0:                   # the fault lies past the command's last step
            break
        # whatever it left, the next command that writes goes through and cleans up
        _model(tmp_path / "v2.safetensors", 2)
        assert _commit(repo_path, tmp_path / "v2.safetensors", "v2").returncode == 0
        with Repository(repo_path) as r:
            assert sha256_bytes(r.read_file("main:v2.safetensors")) == \
                sha256_file(tmp_path / "v2.safetensors")
            assert sha256_bytes(r.read_file(f"{v0}:model.safetensors")) == v0_sha
            rep = r.fsck()
            assert rep.ok and not [g for g in rep.garbage if not g[2]], (event, n, rep)
        shutil.rmtree(repo_path)
    assert n > 1, "the fault was never reached"

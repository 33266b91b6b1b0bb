"""Issue 12: a writer killed *inside* pack writing leaves garbage, never damage, and the next
command that writes (or the next mount) removes it: fsck exits 0 after every trial, no
temporary file remains, every earlier commit exports byte-exact."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from conftest import sha256_bytes, sha256_file
from corafs import Repository
from corafs.store.fsutil import WriterToken, temporaries, writer_alive
from mountutil import corafs, needs_fuse, wait_for

TRIALS = 20          # per writer kind


def _model(path, seed):
    rng = np.random.default_rng(seed)
    safetensors.numpy.save_file({"w": rng.standard_normal((2048, 2048), dtype=np.float32),
                                 "b": rng.standard_normal(4096, dtype=np.float32)}, str(path))


def _temporaries(repo):
    return temporaries(os.path.join(repo, "objects"), os.path.join(repo, "refs"))


def _kill_when_writing(proc, repo, rng, timeout=60):
    """SIGKILL ``proc`` at a random moment after its first temporary file appeared."""
    assert wait_for(lambda: _temporaries(repo) or proc.poll() is not None, timeout=timeout,
                    interval=0.005)
    time.sleep(rng.uniform(0, 0.04))
    inside = bool(_temporaries(repo))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return inside


def _check(repo, known, work):
    """fsck is clean and exits 0, no temporary remains, earlier commits are byte-exact."""
    assert not _temporaries(repo), _temporaries(repo)
    p = corafs("fsck", repo, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "garbage" not in p.stdout, p.stdout
    with Repository(repo) as r:
        for spec, sha in known.items():
            assert sha256_bytes(r.read_file(spec)) == sha, spec


def test_fsck_reports_garbage_but_exits_zero_and_repair_removes_it(tmp_path):
    repo = str(tmp_path / "repo")
    Repository.init(repo).close()
    dead = os.path.join(repo, "objects", "pack-0123.w0123456789ab.spool.tmp")
    with open(dead, "wb") as f:
        f.write(b"x" * 1000)
    p = corafs("fsck", repo, check=False)
    assert p.returncode == 0 and "garbage" in p.stdout and "1000 B" in p.stdout, p.stdout
    p = corafs("fsck", repo, "--repair", check=False)
    assert p.returncode == 0 and "removed" in p.stdout and not os.path.exists(dead)


def test_a_live_writers_temporaries_are_never_removed(tmp_path):
    repo = str(tmp_path / "repo")
    Repository.init(repo).close()
    objdir = os.path.join(repo, "objects")
    tok = WriterToken.of(objdir)                 # this process is a live writer
    mine = tok.tmp(os.path.join(objdir, "pack-abc.idx"))
    open(mine, "wb").write(b"in flight")
    assert writer_alive(objdir, tok.token)
    p = corafs("fsck", repo, "--repair", check=False)   # another process
    assert os.path.exists(mine) and "being written" in p.stdout, p.stdout
    (tmp_path / "f").write_bytes(b"data")
    corafs("commit", repo, tmp_path / "f")        # the next writer leaves it alone too
    assert os.path.exists(mine)
    os.unlink(mine)


def test_kill_commit_inside_pack_writing(tmp_path):
    repo = str(tmp_path / "repo")
    Repository.init(repo).close()
    work = tmp_path / "w"
    work.mkdir()
    rng = random.Random(12)
    known: dict[str, str] = {}
    inside = 0
    for trial in range(TRIALS):
        src = work / f"m{trial}.safetensors"
        _model(src, trial)
        proc = subprocess.Popen([sys.executable, "-m", "corafs", "commit", repo, str(src)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        inside += _kill_when_writing(proc, repo, rng)
        # the next command that writes cleans up
        small = work / "small.json"
        small.write_text(f'{{"trial": {trial}}}')
        corafs("commit", repo, small, "-m", f"after {trial}")
        with Repository(repo) as r:
            known[f"{r.head('main')}:small.json"] = sha256_file(small)
        _check(repo, known, work)
    assert inside >= TRIALS // 2, f"only {inside} kills landed inside pack writing"


@needs_fuse
@pytest.mark.mount
def test_kill_daemon_inside_pack_writing(tmp_path):
    repo = str(tmp_path / "repo")
    mnt = tmp_path / "mnt"
    os.makedirs(mnt)
    corafs("init", repo)
    work = tmp_path / "w"
    work.mkdir()
    rng = random.Random(34)
    known: dict[str, str] = {}
    inside = 0
    for trial in range(TRIALS):
        src = work / f"m{trial}.safetensors"
        _model(src, trial)
        corafs("mount", repo, mnt, "--commit-delay", "0.05")
        pid = int(os.getxattr(mnt, "user.corafs.pid"))
        subprocess.run(["cp", str(src), f"{mnt}/main/"], check=True)

        class P:                                   # the daemon, as _kill_when_writing wants
            def __init__(self, pid):
                self.pid = pid

            def poll(self):
                return None if os.path.exists(f"/proc/{self.pid}") else 0

            def wait(self):
                wait_for(lambda: self.poll() is not None or _zombie(self.pid), timeout=10)
        inside += _kill_when_writing(P(pid), repo, rng)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        assert wait_for(lambda: not os.path.ismount(mnt), timeout=10)
        corafs("mount", repo, mnt)                 # recovery and cleanup happen here
        corafs("umount", mnt)
        with Repository(repo) as r:
            name = f"m{trial}.safetensors"
            if name in r.listdir(r.head("main")):
                got = sha256_bytes(r.read_file(f"main:{name}"))
                assert got == sha256_file(src)     # whole, or not there
                known[f"{r.head('main')}:{name}"] = got
        _check(repo, known, work)
    assert inside >= TRIALS // 2, f"only {inside} kills landed inside pack writing"


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True

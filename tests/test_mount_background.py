"""A real mount's background work, as a user meets it: a copy into a branch is committed while
mounted (on the trio and pyfuse3 that pip installs today), a committer that keeps failing says
so in `corafs status` and `corafs umount`, and the POSIX corners found by a conformance run."""
import errno
import os
import re
import shutil
import stat
import subprocess

import numpy as np
import pytest
import safetensors.numpy

from conftest import sha256_file
from corafs.core.repository import state_dir
from mountutil import corafs, mounted, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]


def _head(repo, branch):
    return corafs("log", repo, branch, "--oneline").stdout.splitlines()[0].split()[0]


def _checkpoint(path, seed=0):
    rng = np.random.default_rng(seed)
    safetensors.numpy.save_file({"w": rng.standard_normal((256, 256)).astype(np.float32),
                                 "b": rng.standard_normal(256).astype(np.float32)}, str(path))
    return sha256_file(path)


def _mount_log(repo):
    with open(os.path.join(state_dir(str(repo)), "logs", "mount.log")) as f:
        return f.read()


@pytest.mark.smoke
def test_copy_into_a_branch_is_committed_while_mounted(fresh, work):
    repo, mnt = fresh
    sha = _checkpoint(work / "model.safetensors")
    with mounted(repo, mnt) as m:
        os.mkdir(f"{m}/finetune")
        before = _head(repo, "finetune")
        shutil.copyfile(work / "model.safetensors", f"{m}/finetune/model.safetensors")
        # while mounted: nothing staged any more, and the branch has a new head
        assert wait_for(lambda: settled(repo) and _head(repo, "finetune") != before,
                        timeout=30), corafs("status", repo).stdout
        out = work / "exported.safetensors"
        corafs("export", repo, "finetune:model.safetensors", out)
        assert sha256_file(out) == sha
        assert sha256_file(f"{m}/finetune/model.safetensors") == sha
    log = _mount_log(repo)
    assert "Traceback" not in log, log
    # a dependency deprecating what the daemon calls shows up in its log (then fix it)
    assert not re.search(r"(Deprecation|PendingDeprecation|Future)Warning", log), log


def _immutable(path, on: bool) -> bool:
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)],
                          capture_output=True).returncode == 0


def test_failing_commits_are_reported_by_status_and_umount(fresh, work):
    """Refs on a filesystem that refuses writes (an immutable directory): every commit fails.
    The mount says so in `corafs status` and at `corafs umount`, logs the traceback once, and
    loses nothing: the next mount commits the change."""
    repo, mnt = fresh
    sha = _checkpoint(work / "model.safetensors")
    heads = os.path.join(str(repo), "refs", "heads")
    m = None
    try:
        os.makedirs(mnt, exist_ok=True)
        corafs("mount", repo, mnt)
        m = str(mnt)
        if not _immutable(heads, True):
            pytest.skip("chattr +i is not supported here")
        shutil.copyfile(work / "model.safetensors", f"{m}/main/model.safetensors")

        def failing(n):
            out = corafs("status", repo).stdout
            hit = re.search(r"commits are failing since \d\d:\d\d \((\d+) attempts\): (.*)", out)
            return hit if hit and int(hit.group(1)) >= n else None

        assert wait_for(lambda: failing(3), timeout=60), corafs("status", repo).stdout
        hit = failing(3)
        assert "Permission" in hit.group(2) or "not permitted" in hit.group(2)
        assert "staged   main:model.safetensors" in corafs("status", repo).stdout
        log = _mount_log(repo)
        assert log.count("Traceback") == 1, log          # once, not once a second
        p = corafs("umount", m, check=False)
        m = None
        assert p.returncode == 1
        assert "commits failed from" in p.stderr and "until unmount" in p.stderr
        assert "main:model.safetensors" in p.stderr
    finally:
        _immutable(heads, False)
        if m is not None and os.path.ismount(m):
            corafs("umount", m, check=False)
    # nothing was lost: the next mount commits it, and its unmount is clean
    with mounted(repo, mnt) as m:
        assert wait_for(lambda: settled(repo), timeout=30)
        assert "are failing since" not in corafs("status", repo).stdout
    out = work / "back.safetensors"
    corafs("export", repo, "main:model.safetensors", out)
    assert sha256_file(out) == sha
    assert "Recover" in corafs("log", repo, "main", "--oneline").stdout


def test_refused_chown_changes_nothing(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt) as m:
        f = f"{m}/main/f.bin"
        with open(f, "wb") as fh:
            fh.write(b"x" * 1000)
        os.chmod(f, 0o6755)
        with pytest.raises(PermissionError):
            os.chown(f, 65534, -1)
        with pytest.raises(PermissionError):
            os.chown(f, -1, 65534)
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755
        assert os.path.getsize(f) == 1000


def test_unlinked_open_file_has_no_links(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt) as m:
        fd = os.open(f"{m}/main/tmp.bin", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"data")
            assert os.fstat(fd).st_nlink == 1
            os.unlink(f"{m}/main/tmp.bin")
            assert os.fstat(fd).st_nlink == 0            # the kernel's own count
            # a setattr's reply carries the daemon's attributes into the kernel's cache, as
            # an expired attribute cache would: the daemon's count must be 0 too
            os.fchmod(fd, 0o600)
            assert os.fstat(fd).st_nlink == 0
            os.write(fd, b"more")                        # still writable, as on a local disk
        finally:
            os.close(fd)
        assert not os.path.exists(f"{m}/main/tmp.bin")
        assert wait_for(lambda: settled(repo), timeout=30)
    assert "tmp.bin" not in corafs("ls", repo, "main").stdout


def test_mknod_makes_a_regular_file_and_refuses_the_rest(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt) as m:
        os.mknod(f"{m}/main/r", 0o100644)
        st = os.stat(f"{m}/main/r")
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(st.st_mode) == 0o644 & ~umask
        with open(f"{m}/main/r", "ab") as f:
            f.write(b"appended")
        with pytest.raises(OSError) as e:
            os.mknod(f"{m}/main/fifo", 0o010644)
        assert e.value.errno == errno.EPERM
        assert wait_for(lambda: settled(repo), timeout=30)
        assert open(f"{m}/main/r", "rb").read() == b"appended"

"""Mount limits that keep the daemon bounded (holes, file size, unmount time), and mounts used
by other users (issue 8, items 8, 10, 15)."""
import hashlib
import os
import subprocess
import sys
import time

import pytest

from corafs import Repository
from mountutil import corafs, mounted, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]

NOBODY = 65534



def test_holes_cost_nothing_and_huge_sizes_are_refused(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        p = subprocess.run(["truncate", "-s", "1T", f"{m}/main/huge"], capture_output=True,
                           text=True)
        assert p.returncode != 0 and "too large" in p.stderr.lower(), p.stderr
        open(f"{m}/main/data", "wb").write(b"head")
        os.truncate(f"{m}/main/data", 1 << 30)           # a 1 GiB file, almost all hole
        t0 = time.monotonic()
        assert wait_for(lambda: settled(repo), timeout=120)
        took = time.monotonic() - t0
    with Repository(repo) as r:
        e = r.entry(r.head("main"), "data")
        h = hashlib.sha256(b"head")
        zero = bytes(1 << 20)
        h.update(zero[:(1 << 20) - 4])
        for _ in range(1023):
            h.update(zero)
        assert e["size"] == 1 << 30 and e["sha256"] == h.hexdigest()
        assert r.stats().stored_bytes < 64 << 20, "holes were stored as data"
    assert took < 60, f"storing a 1 GiB hole took {took:.1f} s"


def test_unmount_never_waits_on_unbounded_work(fresh):
    repo, mnt = fresh
    os.makedirs(mnt)
    corafs("mount", repo, mnt, "--commit-delay", "600", "--unmount-timeout", "1")
    try:
        open(f"{mnt}/main/small", "wb").write(b"small")
        with open(f"{mnt}/main/big", "wb") as f:      # 200 GiB of hole: minutes to hash
            f.truncate(200 << 30)
        t0 = time.monotonic()
        p = corafs("umount", mnt, check=False)
        took = time.monotonic() - t0
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    assert took < 30, f"umount took {took:.1f} s"
    assert p.returncode == 1 and "big" in p.stderr and "not committed" in p.stderr, p.stderr
    with Repository(repo) as r:
        assert r.read_file("main:small") == b"small"     # the rest was committed
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:   # still staged, and mountable
        assert os.path.getsize(f"{m}/main/big") == 200 << 30
        os.unlink(f"{m}/main/big")
        assert wait_for(lambda: settled(repo), timeout=30)
    with Repository(repo) as r:
        assert "big" not in r.listdir(r.head("main")) and r.fsck().ok


@pytest.fixture
def shared(tmp_path):
    """A directory every user can reach (pytest's tmp_path is private to root), and the
    Python interpreter made reachable for the duration of the test (it lives under /root)."""
    import shutil
    import stat
    import tempfile
    d = tempfile.mkdtemp(prefix="corafs-users-", dir="/tmp")
    os.chmod(d, 0o755)
    changed = []
    p = os.path.dirname(os.path.realpath(sys.executable))
    while p != "/":
        mode = os.stat(p).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, mode | stat.S_IXOTH)
            changed.append((p, mode))
        p = os.path.dirname(p)
    fuse_mode = os.stat("/dev/fuse").st_mode
    os.chmod("/dev/fuse", 0o666)                      # as distributions ship it
    try:
        yield __import__("pathlib").Path(d)
    finally:
        os.chmod("/dev/fuse", stat.S_IMODE(fuse_mode))
        for p, mode in changed:
            os.chmod(p, stat.S_IMODE(mode))
        subprocess.run(["fusermount3", "-u", "-z", f"{d}/mnt"], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", f"{d}/u/mnt"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(args, **kw):
    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    return subprocess.run(args, preexec_fn=drop, capture_output=True, text=True, timeout=120,
                          **kw)


def test_allow_other_lets_another_user_read(shared):
    repo, mnt = shared / "repo", shared / "mnt"
    corafs("init", repo)
    src = shared / "w.bin"
    src.write_bytes(b"weights")
    corafs("commit", repo, src)
    with mounted(repo, mnt) as m:                       # without: other users see nothing
        p = _as_nobody(["cat", f"{m}/main/w.bin"])
        assert p.returncode != 0 and "ermission denied" in p.stderr, p.stderr
    with mounted(repo, mnt, "--allow-other") as m:
        p = _as_nobody(["cat", f"{m}/main/w.bin"])
        assert p.returncode == 0 and p.stdout == "weights", p.stderr
        p = _as_nobody(["sh", "-c", f"echo x > {m}/main/other.bin"])
        assert p.returncode != 0                         # permissions: root's 0755 directory


def test_an_ordinary_user_can_mount(shared):
    base = shared / "u"
    base.mkdir()
    os.chown(base, NOBODY, NOBODY)
    repo, mnt = base / "repo", base / "mnt"
    env = {**os.environ, "HOME": str(base)}
    py = [sys.executable, "-m", "corafs"]
    assert _as_nobody(py + ["init", str(repo)], env=env).returncode == 0
    os.makedirs(mnt)
    os.chown(mnt, NOBODY, NOBODY)
    p = _as_nobody(py + ["mount", str(repo), str(mnt), "--commit-delay", "0.2"], env=env)
    assert p.returncode == 0, p.stderr
    try:
        p = _as_nobody(["sh", "-c", f"echo hello > {mnt}/main/f.txt && cat {mnt}/main/f.txt"])
        assert p.stdout == "hello\n", p.stderr
    finally:
        p = _as_nobody(py + ["umount", str(mnt)], env=env)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    assert p.returncode == 0, p.stderr
    with Repository(str(repo)) as r:
        assert r.read_file("main:f.txt") == b"hello\n"

"""Helpers for tests against a real FUSE mount."""
import contextlib
import os
import subprocess
import time

import pytest

from conftest import run_cli


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0 and bool(
        subprocess.run(["which", "fusermount3"], capture_output=True).stdout)


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse, fusermount3, root")


corafs = run_cli        # the tests' one CLI runner (conftest.run_cli)


@contextlib.contextmanager
def mounted(repo, mnt, *extra):
    os.makedirs(mnt, exist_ok=True)
    corafs("mount", repo, mnt, *extra)
    try:
        assert os.path.ismount(mnt)
        yield str(mnt)
    finally:
        if os.path.ismount(mnt):
            p = corafs("umount", mnt, check=False)
            if p.returncode and os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


def wait_for(pred, timeout=10.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def settled(repo) -> bool:
    """Nothing is staged any more: every change made so far is committed."""
    return "nothing staged" in corafs("status", repo).stdout


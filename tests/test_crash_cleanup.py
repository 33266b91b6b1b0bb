"""Issue 12: what a writer killed inside pack writing leaves is garbage, never damage: fsck
reports it and exits 0, ``--repair`` removes it, and a live writer's temporaries are never
taken for garbage. The kills themselves hit every step of writing a pack deterministically in
test_crash.py and test_mount_crash.py (the ``pack`` fault event)."""
import os

from corafs import Repository
from corafs.store.fsutil import WriterToken, writer_alive
from mountutil import corafs

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

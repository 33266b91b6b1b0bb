"""The mount's open files and rules (corafs.view.handles) without FUSE: what is read-only, what
is refused, what an fsync commits, reads through handles with decode-ahead."""
import errno
import hashlib
import os

import pytest

from corafs.view import ROOT_INODE, MountView
from corafs.view.handles import OpenFiles
from corafs.view.staging import Staging


@pytest.fixture
def of(repo):
    st = Staging(repo, os.path.join(repo.path, "staging"), commit_delay=0)
    v = MountView(repo, st)
    h = OpenFiles(v)
    h.prefetch_start, h.prefetch_bytes = 1 << 10, 1 << 12      # decode ahead in small steps
    yield h, v, st
    st.close()


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_history_is_read_only_and_branches_are_writable(of, repo):
    h, v, st = of
    main = v.lookup(ROOT_INODE, "main")
    fh = h.add_writer(*_create(st, main, "w.bin"))
    assert h.write(fh, 0, b"abc") == 3
    assert h.read_now(fh, 0, 10) == b"abc"              # a written file reads from its spool
    w = h.close(fh)
    h.finish(w)
    st.commit("main")
    commits = v.lookup(ROOT_INODE, "@commits")
    entry = v.lookup(commits.inode, repo.head("main"))
    old = v.lookup(entry.inode, "w.bin")
    assert errno_of(h.file_to_open, old.inode, os.O_WRONLY) == errno.EROFS
    assert errno_of(h.parent, entry.inode) == errno.EROFS
    assert errno_of(h.parent, ROOT_INODE) == errno.EPERM        # only branches at the top
    assert errno_of(h.file_to_open, main.inode, os.O_RDONLY) == errno.EISDIR
    assert errno_of(h.setxattr, old.inode, "user.x", b"1") == errno.EROFS
    assert errno_of(h.setxattr, main.inode, "user.x", b"1") == errno.ENOTSUP
    assert errno_of(h.check_access, old.inode, os.W_OK) == errno.EROFS
    h.check_access(old.inode, os.R_OK)
    assert errno_of(h.check_link, main.inode) == errno.EPERM


def _create(st, d, name):
    n, s, fd = st.create(d, name, 0o644)
    return n, s, fd


def test_owner_size_and_root_rules(of, monkeypatch):
    h, v, st = of
    h.check_owner(os.getuid(), None)
    h.check_owner(None, 0xFFFFFFFF)
    assert errno_of(h.check_owner, os.getuid() + 1, None) == errno.EPERM
    main = v.lookup(ROOT_INODE, "main")
    fh = h.add_writer(*_create(st, main, "big.bin"))
    monkeypatch.setattr(st, "max_file_size", 10)
    assert errno_of(h.write, fh, 8, b"xyz") == errno.EFBIG
    h.finish(h.close(fh))
    assert h.root_xattr("user.corafs.pid") == str(os.getpid()).encode()
    assert h.root_xattr("user.corafs.other") is None


def test_fsync_commits_the_branch_of_the_handle(of, repo):
    h, v, st = of
    main = v.lookup(ROOT_INODE, "main")
    before = repo.head("main")
    fh = h.add_writer(*_create(st, main, "s.bin"))
    h.write(fh, 0, b"synced")
    assert h.sync(fh) == "main"                     # the content so far becomes committable
    st.commit("main")
    assert repo.head("main") != before and repo.read_file("main:s.bin") == b"synced"
    h.finish(h.close(fh))
    d = h.open_dir(main.inode)
    assert h.sync_dir(d) == (True, "main")
    h.close_dir(d)
    r = h.open_dir(ROOT_INODE)
    assert h.sync_dir(r) == (True, None)            # the root: every branch
    hist = h.open_dir(v.lookup(ROOT_INODE, "@history").inode)
    assert h.sync_dir(hist) == (False, None)


def test_reads_through_handles_are_byte_exact_and_counted(of, repo, tmp_path):
    h, v, st = of
    data = os.urandom(300_000)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    repo.commit("main", {"blob.bin": str(p)}, message="blob")
    v.refresh()
    main = v.lookup(ROOT_INODE, "main")
    n = v.lookup(main.inode, "blob.bin")
    fh = h.open_read(n.inode)
    out, off = bytearray(), 0
    while off < len(data):
        chunk = h.read_now(fh, off, 65536)
        if chunk is None:
            chunk = h.read(fh, off, 65536)
        out += chunk
        off += len(chunk)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert h.reads >= 5 and h.read_bytes == len(data)
    assert h.close(fh) is None and fh not in h.files

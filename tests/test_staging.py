"""The write side of the mount as a model, without FUSE: node identity, POSIX rename rules,
commits that overlap changes, the journal and crash recovery, failure isolation."""
import errno
import os
import stat

import pytest

from corafs.view import ROOT_INODE, MountView
from corafs.view.staging import Staging, status_lines


@pytest.fixture
def mv(repo):
    st = Staging(repo, os.path.join(repo.path, "staging"), commit_delay=0)
    v = MountView(repo, st)
    yield v, st
    st.close()


def write(st, d, name, data: bytes):
    n, s, fd = st.create(d, name, 0o644)
    os.write(fd, data)
    os.close(fd)
    st.release(n, s)
    return n


def overwrite(st, n, data: bytes, truncate=True):
    s, fd = st.open_write(n, truncate)
    os.pwrite(fd, data, 0)
    os.close(fd)
    st.release(n, s)


def read(v, n) -> bytes:
    r = v.open_reader(n.inode)
    try:
        return r.read(0, 1 << 20)
    finally:
        if hasattr(r, "close"):
            r.close()


def committed(repo, path, branch="main"):
    return repo.read_file(f"{branch}:{path}")


def paths(repo, branch="main"):
    return sorted(p for p, _ in repo.walk(repo.head(branch)))


def test_a_renamed_file_is_written_under_its_new_name(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    a = write(st, main, "a", b"v1")
    st.rename(main, "a", main, "b")
    overwrite(st, a, b"v2")                          # the node, wherever it is now
    st.commit("main")
    assert paths(repo) == ["b"] and committed(repo, "b") == b"v2"


def test_a_renamed_directory_receives_new_files(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    d = st.mkdir(main, "d", 0o755)
    write(st, d, "k", b"1")
    st.rename(main, "d", main, "e")
    write(st, d, "f", b"x")
    st.commit("main")
    assert paths(repo) == ["e/", "e/f", "e/k"]


def test_branch_and_commit_views_are_different_nodes(mv, repo, work):
    v, st = mv
    p = work / "x"
    p.write_bytes(b"committed")
    repo.commit("main", {"x": str(p)})
    v.refresh()
    main = v.lookup(ROOT_INODE, "main")
    bx = v.lookup(main.inode, "x")
    commits = v.lookup(ROOT_INODE, "@commits")
    cdir = v.lookup(commits.inode, repo.head("main"))
    cx = v.lookup(cdir.inode, "x")
    rev = v.lookup(ROOT_INODE, "main~0")
    rx = v.lookup(rev.inode, "x")
    assert len({bx.inode, cx.inode, rx.inode}) == 3
    assert bx.live and not cx.live and not rx.live
    assert not cx.writable and stat.S_IMODE(cx.mode) & 0o222 == 0
    with pytest.raises(OSError) as e:
        st.open_write(cx, False)                     # a commit's file is read-only
    assert e.value.errno == errno.EROFS
    s, fd = st.open_write(bx, False)                 # browsing history changed nothing here
    os.close(fd)
    st.release(bx, s)


def test_rename_follows_posix(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    empty = st.mkdir(main, "empty", 0o755)
    full = st.mkdir(main, "full", 0o755)
    write(st, full, "keep", b"k")
    write(st, main, "file", b"f")
    for args, code in [(("empty", "full"), errno.ENOTEMPTY), (("file", "full"), errno.EISDIR),
                       (("empty", "file"), errno.ENOTDIR), (("full", "full/sub"), errno.EINVAL),
                       (("nope", "x"), errno.ENOENT)]:
        src, dst = args
        dd, dn = (full, "sub") if dst == "full/sub" else (main, dst)
        with pytest.raises(OSError) as e:
            st.rename(main, src, dd, dn)
        assert e.value.errno == code, args
    with pytest.raises(OSError) as e:
        st.rename(main, "file", main, "empty", flags=1)      # RENAME_NOREPLACE
    assert e.value.errno == errno.EEXIST
    st.rename(main, "file", main, "empty2")
    st.rename(main, "empty", main, "full2")
    st.rename(main, "empty2", main, "full2", flags=2)        # RENAME_EXCHANGE
    assert v.peek(main.inode, "full2").kind == "file" and v.peek(main.inode, "empty2") is empty
    st.commit("main")
    assert committed(repo, "full/keep") == b"k"
    assert committed(repo, "full2") == b"f"


def test_moving_a_committed_directory_shows_its_contents_at_once(mv, repo, work):
    v, st = mv
    (work / "a").write_bytes(b"A")
    repo.commit("main", {"dirA/a": str(work / "a"), "dirA/sub/b": str(work / "a")})
    v.refresh()
    main = v.lookup(ROOT_INODE, "main")
    st.rename(main, "dirA", main, "dirB")
    b = v.lookup(main.inode, "dirB")
    assert [n for n, _ in v.listdir(b.inode)] == ["a", "sub"]
    st.commit("main")
    assert paths(repo) == ["dirB/", "dirB/a", "dirB/sub/", "dirB/sub/b"]


def _during_commit(repo, monkeypatch, fn):
    """Run ``fn`` after a commit took its snapshot and before it lands."""
    real = repo.commit_changes

    def commit_changes(*a, **k):
        fn()
        return real(*a, **k)
    monkeypatch.setattr(repo, "commit_changes", commit_changes)


def test_unlink_and_rename_overlapping_a_commit_are_kept(mv, repo, monkeypatch):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    write(st, main, "a", b"a")
    write(st, main, "gone", b"g")

    def meanwhile():
        st.rename(main, "a", main, "b")
        st.unlink(main, "gone")
    _during_commit(repo, monkeypatch, meanwhile)
    st.commit("main")
    assert paths(repo) == ["a", "gone"]              # the snapshot was committed...
    assert sorted(n for n, _ in v.listdir(main.inode)) == ["b"]   # ...the changes stay
    monkeypatch.undo()
    st.commit("main")
    assert paths(repo) == ["b"] and committed(repo, "b") == b"a"


def test_directory_inodes_survive_commits(mv, repo, work):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    d = st.mkdir(main, "run", 0o755)
    sub = st.mkdir(d, "logs", 0o755)
    write(st, sub, "x", b"1")
    st.commit("main")
    (work / "y").write_bytes(b"cli")
    repo.commit("main", {"run/logs/y": str(work / "y")})     # another writer
    v.refresh()
    write(st, sub, "z", b"3")
    st.commit("main")
    assert v.lookup(main.inode, "run") is d and v.lookup(d.inode, "logs") is sub
    assert st.forest.path(sub) == "run/logs"
    assert paths(repo) == ["run/", "run/logs/", "run/logs/x", "run/logs/y", "run/logs/z"]


def test_read_after_write_at_every_instant(mv, repo, work):
    v, st = mv
    (work / "m").write_bytes(b"0123456789")
    repo.commit("main", {"m.bin": str(work / "m")})
    v.refresh()
    main = v.lookup(ROOT_INODE, "main")
    n = v.lookup(main.inode, "m.bin")
    ino = n.inode
    overwrite(st, n, b"AB", truncate=False)                 # dd conv=notrunc
    assert read(v, n) == b"AB23456789"
    overwrite(st, n, b"CD", truncate=False)                 # a second in-place write
    assert read(v, n) == b"CD23456789"
    st.truncate(n, 20)                                      # a truncate that grows it
    assert n.size == 20 and read(v, n) == b"CD23456789" + b"\0" * 10
    st.commit("main")
    assert v.lookup(main.inode, "m.bin").inode == ino and read(v, n)[:2] == b"CD"
    t = write(st, main, "tmp123", b"new")                   # tempfile + os.replace
    st.rename(main, "tmp123", main, "m.bin")
    assert v.lookup(main.inode, "m.bin") is t and read(v, t) == b"new"


def test_fsync_of_a_descriptor_open_for_writing_commits_its_content(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    n, s, fd = st.create(main, "log.txt", 0o644)
    os.write(fd, b"first")
    st.sync_file(n, s)
    st.commit("main")
    assert committed(repo, "log.txt") == b"first"           # still open for writing
    os.write(fd, b" second")
    os.close(fd)
    st.release(n, s)
    st.commit("main")
    assert committed(repo, "log.txt") == b"first second"


def test_names_longer_than_255_bytes_are_refused(mv):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    for op in (lambda: st.create(main, "x" * 256, 0o644), lambda: st.mkdir(main, "é" * 128, 0o755),
               lambda: st.symlink(main, "l" * 300, b"t")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.ENAMETOOLONG


def test_modes_mtimes_and_symlinks_are_committed(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    n = write(st, main, "run.sh", b"#!/bin/sh\n")
    st.set_attrs(n, mode=0o755, mtime_ns=1_600_000_000_123_456_789)
    st.symlink(main, "latest", b"run.sh")
    d = st.mkdir(main, "d", 0o755)
    st.mkdir(d, "e", 0o755)
    assert d.nlink == 3
    st.commit("main")
    e = repo.entry(repo.head("main"), "run.sh")
    assert e["mode"] == 0o755 and e["mtime_ns"] == 1_600_000_000_123_456_789
    assert repo.entry(repo.head("main"), "latest") == {"kind": "link", "target": "run.sh",
                                                        "mtime_ns": v.peek(main.inode,
                                                                           "latest").mtime_ns}
    v2 = MountView(repo)                                     # as the next mount shows them
    m2 = v2.lookup(ROOT_INODE, "main")
    f = v2.lookup(m2.inode, "run.sh")
    assert stat.S_IMODE(f.mode) == 0o755 and f.mtime == 1_600_000_000_123_456_789
    assert v2.lookup(m2.inode, "latest").target == b"run.sh"
    assert st.commit("main") is None                         # nothing changed: no commit


def test_external_commit_merges_with_staged_work(mv, repo, work):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    write(st, main, "mine", b"m")
    (work / "t").write_bytes(b"theirs")
    repo.commit("main", {"theirs": str(work / "t")})
    v.refresh()
    assert sorted(n for n, _ in v.listdir(main.inode)) == ["mine", "theirs"]
    st.commit("main")
    assert paths(repo) == ["mine", "theirs"]


def test_a_file_that_cannot_be_stored_does_not_stop_the_rest(mv, repo, monkeypatch):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    from corafs.core.ingest import Ingestor
    real = Ingestor.ingest_path

    def ingest_path(self, src, name, ref):
        if name == "bad.bin":
            raise RuntimeError("simulated failure")
        return real(self, src, name, ref)
    monkeypatch.setattr(Ingestor, "ingest_path", ingest_path)
    write(st, main, "bad.bin", b"bad")
    write(st, main, "good.bin", b"good")
    st.ingest_ready()                                       # one batch, one failure
    assert st.due(now=1e12) == ["main"]                     # the failed file does not block
    st.commit("main")
    assert paths(repo) == ["good.bin"]
    lines = status_lines(repo.path)
    assert any("bad.bin" in ln and "NOT STORED" in ln and "simulated failure" in ln
               for ln in lines), lines
    assert read(v, v.lookup(main.inode, "bad.bin")) == b"bad"   # still there, readable


def test_recovery_commits_closed_files_and_keeps_open_ones(repo):
    st = Staging(repo, os.path.join(repo.path, "staging"), commit_delay=0)
    v = MountView(repo, st)
    main = v.lookup(ROOT_INODE, "main")
    d = st.mkdir(main, "d", 0o755)
    n = write(st, d, "closed.bin", b"closed")
    st.ingest(n)                                            # durable + ingested
    n2 = write(st, d, "durable.bin", b"durable")
    s2 = n2.staged
    from corafs.store.fsutil import fsync_path as _fsync_path   # durable, not ingested
    _fsync_path(s2.spool)
    s2.state = "durable"
    st._record_node(n2, durable=True)
    write(st, main, "unsynced.bin", b"u")                   # closed, never made durable
    n3, s3, fd = st.create(main, "open.bin", 0o644)
    os.write(fd, b"partial")
    os.close(fd)
    st.rename(main, "d", main, "e")
    st.journal.close()                                      # the daemon dies here
    st2 = Staging(repo, os.path.join(repo.path, "staging"))
    v2 = MountView(repo, st2)
    report = st2.recover()                                  # staged again, as it was
    m2 = v2.lookup(ROOT_INODE, "main")
    assert sorted(n for n, _ in v2.listdir(v2.lookup(m2.inode, "e").inode)) == \
        ["closed.bin", "durable.bin"], report
    st2.commit_all()                                        # ingested and committed
    assert paths(repo) == ["e/", "e/closed.bin", "e/durable.bin"], report
    assert repo.log("main")[0].message.startswith("Recover after an unclean unmount")
    lost = os.path.join(repo.path, "staging", "lost+found", "main")
    assert open(os.path.join(lost, "open.bin"), "rb").read() == b"partial"
    assert open(os.path.join(lost, "unsynced.bin"), "rb").read() == b"u"
    assert os.listdir(os.path.join(repo.path, "staging", "spool")) == []
    assert st2.recover() == []                              # nothing left to recover
    assert repo.fsck().ok
    st2.close()


def test_journal_rows_follow_every_change(mv, repo):
    v, st = mv
    main = v.lookup(ROOT_INODE, "main")
    d = st.mkdir(main, "d", 0o755)
    write(st, d, "a", b"a")
    st.rename(main, "d", main, "e")
    rows = st.journal.load()["main"][1]
    assert set(rows) == {"e", "e/a"} and rows["e"]["op"] == "mkdir"
    st.unlink(d, "a")
    assert set(st.journal.load()["main"][1]) == {"e"}
    st.commit("main")
    assert st.journal.load() == {}


def test_an_unreadable_journal_never_stops_a_mount(repo):
    root = os.path.join(repo.path, "staging")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "journal.db"), "wb") as f:
        f.write(b"this is not a database" * 100)
    st = Staging(repo, root)
    v = MountView(repo, st)
    report = st.recover()
    assert any("could not be read" in line for line in report), report
    main = v.lookup(ROOT_INODE, "main")
    write(st, main, "after.bin", b"ok")                  # and the mount works
    st.commit("main")
    assert committed(repo, "after.bin") == b"ok"
    st.close()
